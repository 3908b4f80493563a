"""The ``kvspec`` command line.

Each subcommand lives in its own module, which provides ``add_arguments(parser)`` and
``run(args) -> int``. Modules are imported only when their command runs, so that
``kvspec --help`` stays fast and heavy dependencies (torch, z3) load on demand.

Exit statuses, the same for every command (:mod:`kvspec.conformance.commands`): 0 agree,
proved or done; 1 a divergence, a counterexample or a surviving mutant; 2 a usage error,
one line on stderr and nothing run or written; 3 (prove) the z3 model failed its check
against the spec; 130 interrupted (Ctrl-C), one line saying how far it got; 141 the output
pipe was closed (``kvspec replay ... | head``), quietly, as for any program stopped by
SIGPIPE.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
from typing import NoReturn

from kvspec.conformance.errors import UsageError

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


#: Exit statuses (see the module docstring).
OK, FAILED, USAGE, INTERRUPTED, BROKEN_PIPE = 0, 1, 2, 130, 141


class Parser(argparse.ArgumentParser):
    """Refuses a bad command line in one line (the usage is one ``--help`` away)."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _load(name: str):
    return importlib.import_module(COMMANDS[name][0])


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = Parser(
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
    prog = f"kvspec {chosen}" if chosen else "kvspec"
    try:
        parser = build_parser(only=chosen or "__none__")
        args, extra = parser.parse_known_args(argv)
        if extra:  # said by the command, whose --help lists what it takes
            raise UsageError(f"unrecognized arguments: {' '.join(extra)} (see {prog} --help)")
        if args.command is None:
            parser.print_help()
            return OK
        status = int(_load(args.command).run(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not at exit
        return status
    except SystemExit as exc:  # argparse's: --help (0), a bad option (2, already said)
        if isinstance(exc.code, int):
            return exc.code
        raise
    except UsageError as exc:
        _say(f"{prog}: {exc}")
        return USAGE
    except KeyboardInterrupt as exc:
        summary = getattr(exc, "summary", None) or "interrupted"
        _say(f"{prog}: {summary}")
        return INTERRUPTED
    except BrokenPipeError:
        # The reader went away (``| head``): stop quietly; Python's own flush at exit would
        # fail again, so stdout now points at /dev/null.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return BROKEN_PIPE


def _say(line: str) -> None:
    """One line on stderr, the only output of a refused or interrupted command's end."""
    with contextlib.suppress(BrokenPipeError, ValueError):
        sys.stdout.flush()
    print(" ".join(line.split()), file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
