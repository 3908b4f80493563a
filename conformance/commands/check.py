"""``kvspec check``: drive a target allocator against the spec and report.

Per level: the exhaustive engine first (every short sequence at tiny configurations), then
the random engine, then the minimizer on any failure. On success it prints what was
explored (the exhaustive bound and states, the random examples and steps, move and
invariant counts, the named situations reached). On failure it prints the 1-minimal
sequence with both sides' observations after its last step, and writes a ``kvspec-trace``
file and a pytest function.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import time
from pathlib import Path
from typing import Any

from kvspec.conformance.commands import (
    Interrupted,
    UsageError,
    non_negative_float,
    positive_int,
    usable_level,
    writable_path,
)
from kvspec.conformance.engines.pipeline import CheckResult
from kvspec.conformance.engines.settings import DEFAULT_DB, SETTINGS_ENV, SETTINGS_PROFILES
from kvspec.conformance.show.frames import SHOWN_LEVELS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--target", default="impl",
        help="impl (default), vllm, mutant:NAME, or module.path:factory building a PoolTarget "
        "or a ManagerTarget",
    )
    parser.add_argument(
        "--level", choices=["pool", "manager", "content", "hybrid", "all"], default="all",
        help="which level to check (default all: pool, then manager where the target has one; "
        "content, which needs torch, and hybrid only when asked for)",
    )
    parser.add_argument(
        "--device", default="cpu",
        help="content level: where the block store lives (cpu, cuda, cuda:1...); a CPU "
        "shadow store must agree bit for bit",
    )
    parser.add_argument(
        "--dtype", choices=["float32", "float16", "bfloat16"], default="float32",
        help="content level: the block store's dtype",
    )
    parser.add_argument("--profile", choices=["current", "classic"], default="current")
    parser.add_argument(
        "--mode", choices=["strict", "abstract"], default="strict",
        help="strict: same ids and queue order as the spec; abstract: any allowed choice",
    )
    parser.add_argument(
        "--settings", choices=list(SETTINGS_PROFILES), default=None,
        help=f"effort (default: ${SETTINGS_ENV} or dev)",
    )
    parser.add_argument("--max-examples", type=positive_int, default=None,
                        help="random engine: examples, at least 1 (overrides --settings)")
    parser.add_argument("--steps", type=positive_int, default=None,
                        help="random engine: steps per example, at least 1 (overrides "
                        "--settings)")
    parser.add_argument("--seed", type=int, default=None, help="seed for reproducible runs")
    parser.add_argument(
        "--exhaustive-seconds", type=non_negative_float, default=None,
        help="CPU-time budget of the exhaustive engine per level, in seconds (0: skip it; "
        "default from --settings)",
    )
    parser.add_argument("--db", type=Path, default=DEFAULT_DB, help="example database folder")
    parser.add_argument("--no-db", action="store_true", help="do not read or write the database")
    parser.add_argument(
        "--bad-input", choices=["check", "report", "off"], default="check",
        help="check: operations the spec refuses must be refused with no side effect "
        "(default); report: do not send them during the run, then print what the target "
        "does with each (for targets that do not validate, like upstream); off: never send",
    )
    parser.add_argument(
        "--no-bad-input", dest="bad_input", action="store_const", const="off",
        help="same as --bad-input off",
    )
    parser.add_argument("--out", type=Path, default=Path(".kvspec") / "traces",
                        help="where failure traces and pytest functions are written")
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    parser.add_argument("--junit", type=Path, default=None, metavar="REPORT.xml",
                        help="also write a JUnit XML report (one test case per level)")
    parser.add_argument("--html", type=Path, default=None, metavar="OUT.html",
                        help="on a failure, also draw its trace as a page (kvspec show); "
                        "with --level all, one page per failing level, OUT-LEVEL.html")


def _counts(counter: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counter.items())) or "none"


def print_summary(result: CheckResult) -> None:
    s = result.stats
    print(f"{result.level} level, target {result.target}, profile {result.profile}, "
          f"mode {result.mode}: {result.seconds:.1f}s")
    if result.unsupported:
        print(f"  not supported by target, switched off: {sorted(result.unsupported)}")
    if result.exhaustive is not None:
        e = result.exhaustive
        print(f"  {e.describe()}, {e.seconds:.1f}s")
    if s.examples:
        rate = s.steps / result.seconds if result.seconds else 0.0
        print(f"  random: {s.examples} examples, {s.steps} steps, {rate:,.0f} steps/s")
        print("  moves:      " + _counts(s.rules))
        print("  invariants: " + _counts(s.invariant_checks))
        if result.situations:
            reached = {k: s.situations.get(k, 0) for k in result.situations}
            missing = [k for k, v in reached.items() if not v]
            print("  situations: " + ", ".join(f"{k} {v}" for k, v in reached.items()))
            if missing:
                print(f"  not reached: {', '.join(missing)}")


def how_minimal(result: CheckResult) -> str:
    """What is known of the failing sequence's length, in the report's words."""
    failure = result.failure
    if failure is None or not result.minimal:
        return ""
    words = "1-minimal"
    e = result.exhaustive
    if result.found_by == "exhaustive" and e is not None and len(failure.steps) == e.failing_depth:
        words += ", shortest in the exhaustive search"
    return words


def levels_to_run(target: str, level: str) -> tuple[list[str], list[str]]:
    """The levels ``kvspec check`` runs for ``target``, and notes on any it leaves out.

    ``all`` means every level the target has: both for ``impl`` and ``vllm``, and for
    ``module:factory`` the one level its factory implements
    (:func:`kvspec.conformance.manager.targets.factory_level`).
    """
    from kvspec.conformance.manager.targets import BUILTIN_MANAGER_TARGETS, factory_level
    from kvspec.conformance.pool.targets import BUILTIN_TARGETS, load_factory

    if level != "all":
        return [level], []
    name = target.strip()
    if name in BUILTIN_TARGETS or name in BUILTIN_MANAGER_TARGETS:
        levels = [lv for lv, names in (("pool", BUILTIN_TARGETS),
                                       ("manager", BUILTIN_MANAGER_TARGETS)) if name in names]
        notes = [] if "manager" in levels else [f"manager level: no adapter for {name!r}"]
        return levels, notes
    if name.startswith("mutant:"):
        from kvspec.conformance.mutants import MUTANTS

        mutant = MUTANTS.get(name.removeprefix("mutant:"))
        if mutant is not None and mutant.level != "content":
            return [mutant.level], []
    return [factory_level(load_factory(name))], []


def run(args: argparse.Namespace) -> int:
    levels, notes = levels_to_run(args.target, args.level)
    if args.level == "manager" and args.mode != "strict":
        raise UsageError("the manager level runs in strict mode only")
    factories = prepare(args, levels)
    if "manager" in levels and args.mode != "strict":
        notes.append("the manager level runs in strict mode only")
    for note in notes:
        print(f"note: {note}")
    status = 0
    cases = []
    for level in levels:
        start = time.perf_counter()
        with contextlib.redirect_stdout(_Tee(sys.stdout)) as out:
            level_status = run_level(args, level, factories[level])
        cases.append((level, level_status, time.perf_counter() - start, out.text()))
        status = max(status, level_status)
    if args.junit is not None:
        write_junit(args.junit, args.target, cases)
    return status


def prepare(args: argparse.Namespace, levels: list[str]) -> dict[str, Any]:
    """Check everything a run needs before it starts (the settings, each level's options,
    the target's factory, the output paths): a usage error, if any, comes before any
    work and any output. Returns each level's factory."""
    from kvspec.conformance.engines.settings import settings_profile
    from kvspec.conformance.level import RunOptions
    from kvspec.conformance.levels import check_factory

    try:
        settings_profile(args.settings)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    writable_path(args.out, "--out", folder=True)
    if not args.no_db:
        writable_path(args.db, "--db", folder=True)
    for option, path in (("--junit", args.junit), ("--html", args.html)):
        if path is not None:
            writable_path(path, option, folder=False)
    factories = {}
    for level in levels:
        lv = usable_level(level)
        mode = "strict" if level in ("manager", "hybrid") else args.mode
        try:
            lv.check_mode(mode)
            lv.check_options(RunOptions(profile=args.profile, mode=mode,
                                        bad_input=args.bad_input, device=args.device,
                                        dtype=args.dtype))
        except ValueError as exc:
            raise UsageError(f"--level {level}: {exc}") from None
        if args.html is not None and level not in SHOWN_LEVELS:
            raise UsageError(f"--html: kvspec show cannot draw a {level} level trace "
                             f"(it draws {', '.join(SHOWN_LEVELS)})")
        factory = lv.load_factory(args.target)
        check_factory(level, factory, args.target, profile=args.profile)
        factories[level] = factory
    return factories


class _Tee(io.StringIO):
    """Prints through to ``stream`` and keeps a copy (the JUnit report's text)."""

    def __init__(self, stream: Any) -> None:
        super().__init__()
        self.stream = stream

    def write(self, text: str) -> int:
        self.stream.write(text)
        return super().write(text)

    def text(self) -> str:
        return self.getvalue()


def write_junit(path: Path, target: str, cases: list[tuple[str, int, float, str]]) -> None:
    """A JUnit XML report: one test case per level, the printed report as its text."""
    from xml.etree import ElementTree as ET

    from kvspec.conformance.report import write_atomically

    failures = sum(1 for _level, status, _s, _t in cases if status)
    suite = ET.Element("testsuite", name="kvspec check", tests=str(len(cases)),
                       failures=str(failures), errors="0",
                       time=f"{sum(c[2] for c in cases):.3f}")
    for level, status, seconds, text in cases:
        case = ET.SubElement(suite, "testcase", classname=f"kvspec.{target}", name=level,
                             time=f"{seconds:.3f}")
        if status:
            caught = next((line for line in text.splitlines()
                           if line.startswith(("caught by:", "SPEC ERROR"))), "FAIL")
            ET.SubElement(case, "failure", message=caught).text = text
        else:
            ET.SubElement(case, "system-out").text = text
    root = ET.Element("testsuites")
    root.append(suite)
    write_atomically(path, ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n")


def run_level(args: argparse.Namespace, level: str, factory: Any) -> int:
    """Check one level; print its summary and, on failure, the report. Exit status."""
    from kvspec.conformance.engines.pipeline import CheckInterrupted, run_check
    from kvspec.conformance.levels import get_level
    from kvspec.conformance.report import count_steps, format_failure, write_failure

    lv = get_level(level)
    try:
        result = run_check(
            factory,
            target_name=args.target,
            level=lv,
            profile=args.profile,
            mode="strict" if level in ("manager", "hybrid") else args.mode,
            settings_name=args.settings,
            max_examples=args.max_examples,
            steps=args.steps,
            seed=args.seed,
            database=None if args.no_db else args.db,
            progress=not args.quiet,
            bad_input=args.bad_input,
            exhaustive=args.exhaustive_seconds != 0,
            exhaustive_seconds=args.exhaustive_seconds,
            device=args.device,
            dtype=args.dtype,
        )
    except CheckInterrupted as stop:
        print_summary(stop.result)
        raise Interrupted(f"interrupted at the {level} level {stop.progress}; no trace "
                          "written for it") from None
    except SystemExit as exc:  # from the target: never a silent exit with its status
        raise UsageError(f"--target {args.target!r}: the target raised SystemExit({exc.code!r}) "
                         "during the run; nothing written") from None
    print_summary(result)
    if level == "pool" and args.bad_input == "report":
        from kvspec.conformance.pool.bad_input import format_report, probe_all

        print(format_report(probe_all(factory, profile=args.profile)))
    if result.failure is None:
        print("PASS: no divergence from the spec")
        return 0
    found = (f" (found by the {result.found_by} engine, "
             f"{count_steps(result.found_length or 0)} before minimizing)")
    print("\nFAIL" + found + "\n" + format_failure(result.failure,
                                                   how_minimal=how_minimal(result)))
    trace_path, test_path = write_failure(result.failure, args.target, args.out)
    print(f"\ntrace:  {trace_path}   (kvspec replay {trace_path} --target {args.target})")
    print(f"pytest: {test_path}")
    if args.html is not None:
        from kvspec.conformance.show import write_html

        page = args.html if args.level != "all" else args.html.with_name(
            f"{args.html.stem}-{level}{args.html.suffix}")
        write_html(result.failure.trace(), factory, page, target_name=args.target)
        print(f"html:   {page}")
    return 1
