"""The ``kvspec`` command line.

Each subcommand lives in its own module, which provides ``add_arguments(parser)`` and
``run(args) -> int``. Modules are imported only when their command runs, so that
``kvspec --help`` stays fast and heavy dependencies (torch, z3) load on demand.
"""

from __future__ import annotations

import argparse
import importlib
import sys

_CMD = "kvspec.conformance.commands"

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "spec": (f"{_CMD}.spec", "print the spec's invariants and profiles"),
    "check": (f"{_CMD}.check", "drive a target allocator against the spec"),
    "mutants": (f"{_CMD}.mutants", "run the suite against the mutant zoo (kill matrix)"),
    "replay": (f"{_CMD}.replay", "replay a kvspec-trace file against a target"),
    "show": (f"{_CMD}.show", "render a kvspec-trace file as one static HTML page"),
    "fuzz": (f"{_CMD}.fuzz", "a long fuzzing campaign with HypoFuzz (the fuzz extra)"),
    "prove": (f"{_CMD}.prove", "bounded model checking and induction proofs with z3"),
    "bench": ("kvspec.benchmarks.cli", "benchmarks: queue, pool, store, upstream, check, prove"),
    "estimate": (f"{_CMD}.estimate", "KV memory with and without prefix caching"),
}


def _load(name: str):
    return importlib.import_module(COMMANDS[name][0])


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kvspec",
        description=(
            "An executable formal model of a PagedAttention KV-cache block pool, and a "
            "conformance suite that checks allocators against it."
        ),
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if only is None or only == name:
            _load(name).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # Only the chosen command's module is imported to build its arguments.
    chosen = next((a for a in argv if a in COMMANDS), None)
    parser = build_parser(only=chosen or "__none__")
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return int(_load(args.command).run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
