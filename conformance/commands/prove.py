"""``kvspec prove``: prove the pool invariants with z3, or find the shortest way to break them.

For a small pool (N blocks, R requests with tables of at most L blocks, H content
hashes) it first looks for an inductive strengthening of the invariants (a proof for all
depths), then runs bounded model checking with iterative deepening on whatever is not
proved, so that a broken invariant comes with a *shortest* counterexample. With
``--mutant NAME`` the transition relation carries that bug instead, and one more row,
``differs-from-spec``, gives the shortest sequence after which a caller can tell the
mutant from the spec (some bugs break no invariant).

Counterexamples are printed as numbered request operations with the pool calls they
make, and written as ``kvspec-trace`` files that ``kvspec replay`` runs on the spec and
on any target. See docs/prove.md.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # z3 is imported only when the command runs
    from kvspec.conformance.trace import Trace
    from kvspec.spec.symbolic.bmc import Counterexample, Result
    from kvspec.spec.symbolic.model import ModelConfig

DEFAULT_OUT = Path(".kvspec/traces")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--blocks", type=int, default=4, metavar="N",
                        help="pool size N, the null block included (default 4)")
    parser.add_argument("--requests", type=int, default=2, metavar="R",
                        help="number of requests (default 2)")
    parser.add_argument("--table-len", type=int, default=3, metavar="L",
                        help="longest block table (default 3)")
    parser.add_argument("--hashes", type=int, default=3, metavar="H",
                        help="number of content hashes, a heap-numbered tree (default 3)")
    parser.add_argument("--depth", type=int, default=8, metavar="K",
                        help="deepest bounded model checking depth (default 8)")
    parser.add_argument("--invariant", action="append", metavar="NAME",
                        help="check only this invariant (repeatable; default: all)")
    parser.add_argument("--profile", choices=("current", "classic"), default=None,
                        help="pool profile (default: the mutant's, else current)")
    parser.add_argument("--mutant", metavar="NAME",
                        help="check a buggy transition relation instead of the spec")
    parser.add_argument("--list-mutants", action="store_true",
                        help="list the symbolic mutants and exit")
    parser.add_argument("--induction", action=argparse.BooleanOptionalAction, default=True,
                        help="try unbounded proofs first (default: on)")
    parser.add_argument("--all-counterexamples", action="store_true",
                        help="search every invariant to --depth (default: stop at the "
                             "first depth where any invariant breaks)")
    parser.add_argument("--one-shot", action="store_true",
                        help="a fresh solver per query instead of push/pop")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, metavar="DIR",
                        help=f"where counterexample traces go (default {DEFAULT_OUT})")


def counterexample_trace(cfg: ModelConfig, cex: Counterexample, mutant: str | None) -> Trace:
    """The pool calls of a counterexample, as a replayable ``kvspec-trace``."""
    from kvspec.conformance.trace import Step, Trace

    steps = [Step(op, dict(args)) for calls in cex.calls for op, args in calls]
    source = f"the {mutant} mutant" if mutant else "the spec"
    ops = "; ".join(f"{i}. {op.describe()}" for i, op in enumerate(cex.ops, 1))
    what = (f"after which {source} and the spec differ" if cex.invariant == "differs-from-spec"
            else f"by which {source} breaks {cex.invariant}")
    note = (
        f"kvspec prove: a shortest counterexample ({len(cex.ops)} request operations) "
        f"{what}, at {cfg.describe()}. "
        f"Operations: {ops or '(none: the initial state)'}. "
        f"Broken: {cex.violations[0]}"
    )
    return Trace(
        level="pool",
        config={
            "num_blocks": cfg.num_blocks,
            "enable_caching": True,
            "profile": cfg.profile.name,
        },
        steps=steps,
        note=note,
    )


def format_counterexample(cex: Counterexample) -> list[str]:
    """Numbered request operations, their pool calls and the tables after each."""
    what = ("the spec and the mutant differ" if cex.invariant == "differs-from-spec"
            else cex.invariant)
    lines = [f"counterexample for {what}, {len(cex.ops)} step(s):"]
    if not cex.ops:
        lines.append("  (the initial state already breaks it)")
    for i, (op, calls) in enumerate(zip(cex.ops, cex.calls, strict=True), 1):
        world = cex.worlds[i]
        shown = ", ".join(_call(name, args) for name, args in calls)
        tables = " ".join(f"r{q}={list(t)}" for q, t in enumerate(world.tables))
        lines.append(f"  {i}. {op.describe():<18} {shown}")
        lines.append(f"     {'':<18} queue={list(world.pool.free_queue)} {tables}")
    lines += [f"  broken: {v}" for v in cex.violations]
    return lines


def _call(name: str, args: dict) -> str:
    shown = ", ".join(
        f"{k}={v.decode() if isinstance(v, bytes) else v}" for k, v in args.items()
        if v is not None
    )
    return f"{name}({shown})"


def _table(rows: list[tuple[str, str, str]]) -> list[str]:
    headers = ("invariant", "result", "seconds")
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(3)]
    fmt = f"  {{:<{widths[0]}}}  {{:<{widths[1]}}}  {{:>{widths[2]}}}"
    return [fmt.format(*headers), fmt.format(*("-" * w for w in widths))] + [
        fmt.format(*r) for r in rows
    ]


def run(args: argparse.Namespace) -> int:
    """:func:`_run`, stopped cleanly by Ctrl-C: the invariants settled so far, one line
    saying where it stopped (:class:`Interrupted`, exit 130). The output folder is checked
    before any proof runs."""
    from kvspec.conformance.commands import Interrupted, writable_path

    if not args.list_mutants:
        writable_path(args.out, "--out", folder=True)
    _progress.clear()
    started = time.monotonic()
    try:
        with _z3_interrupts():
            return _run(args)
    except KeyboardInterrupt:
        results = _progress.get("results", {})
        if results:
            print("\n  settled before the interrupt:")
            print("\n".join(_table([(n, r.describe(), f"{r.seconds:.2f}")
                                    for n, r in results.items()])))
        written = len(_progress.get("written", []))
        raise Interrupted(
            f"interrupted after {time.monotonic() - started:.1f}s during "
            f"{_progress.get('stage', 'setup')}: {len(results)} result(s) settled; "
            f"{written or 'no'} counterexample trace(s) written") from None


#: Where :func:`_run` is: its stage and the results settled so far (for an interrupt).
_progress: dict = {}


@contextlib.contextmanager
def _z3_interrupts() -> Iterator[None]:
    """Turn Ctrl-C during a z3 query into ``KeyboardInterrupt``. z3 catches SIGINT itself
    while it solves, cancels the query and returns ``unknown``; without this the proof
    would go on with the next query as if nothing had happened. A press that Python
    dropped (in a z3 object's ``__del__``) is raised at the next query (:class:`CtrlC`)."""
    import z3
    from kvspec.conformance.interrupts import CtrlC

    check = z3.Solver.check

    def checked(self: z3.Solver, *assumptions: Any) -> Any:
        ctrl_c.check()
        verdict = check(self, *assumptions)
        if verdict == z3.unknown and self.reason_unknown() == "interrupted from keyboard":
            raise KeyboardInterrupt
        return verdict

    z3.Solver.check = checked  # type: ignore[method-assign]
    try:
        with CtrlC() as ctrl_c:
            yield
            ctrl_c.check()
    finally:
        z3.Solver.check = check  # type: ignore[method-assign]


def _run(args: argparse.Namespace) -> int:
    from kvspec.spec.profiles import get_profile
    from kvspec.spec.symbolic import bmc as bmc_mod
    from kvspec.spec.symbolic import induction
    from kvspec.spec.symbolic.encoding import AUXILIARY_MEANING
    from kvspec.spec.symbolic.model import ModelConfig
    from kvspec.spec.symbolic.twins import MUTANTS, get_mutant

    if args.list_mutants:
        width = max(len(n) for n in MUTANTS)
        for m in MUTANTS.values():
            where = f" [{m.profile} profile]" if m.profile else ""
            print(f"  {m.name:<{width}}  {m.summary}{where}")
        return 0
    try:
        mutant = get_mutant(args.mutant)
        profile = get_profile(args.profile or (mutant.profile if mutant else None) or "current")
        cfg = ModelConfig(
            num_blocks=args.blocks, num_requests=args.requests, table_len=args.table_len,
            num_hashes=args.hashes, profile=profile,
        )
        if args.depth < 0:
            raise ValueError(f"--depth must be at least 0, got {args.depth}")
        every = bmc_mod.all_invariant_names(cfg)
        names = args.invariant or every
        unknown = sorted(set(names) - set(every))
        if unknown:
            raise ValueError(f"unknown invariant(s) {unknown}; expected some of {every}")
    except ValueError as exc:
        from kvspec.conformance.commands import UsageError

        raise UsageError(str(exc)) from None
    mname = mutant.name if mutant else None

    print(f"kvspec prove: {cfg.describe()}")
    print(f"  model: {'mutant ' + mname + ': ' + mutant.summary if mutant else 'the spec'}")
    print(f"  bounded model checking to depth {args.depth}; induction "
          f"{'on' if args.induction else 'off'}")

    results: dict[str, Result] = {}
    _progress.update(results=results, stage="the inductive proofs")
    assume: list[str] = []
    report = None
    if args.induction:
        report = induction.prove(cfg, names, mname)
        for name, method in report.proved.items():
            results[name] = bmc_mod.Result(name, "proved", -1, report.seconds[name], None, method)
        assume = induction.lemma_names(report)
    todo = [n for n in names if n not in results]
    if todo:
        started = time.monotonic()
        _progress["stage"] = f"bounded model checking to depth {args.depth}"
        found = bmc_mod.bmc(cfg, mname, todo, args.depth, incremental=not args.one_shot,
                            assume=assume, stop_at_first=not args.all_counterexamples)
        results.update(found)
        if report is not None:
            # k-induction for what held to the full depth: BMC covered the base case.
            for name in todo:
                r = results[name]
                if r.status != "holds" or r.depth < args.depth:
                    continue
                _progress["stage"] = f"k-induction of {name}"
                for k in range(2, min(4, args.depth + 1) + 1):
                    verdict = induction.k_induction(cfg, name, report.survivors, k, mname)
                    if str(verdict) == "unsat":
                        r.status, r.method = "proved", f"{k}-induction"
                        break
                r.seconds = time.monotonic() - started

    shown = list(names)
    if mutant is not None:
        # A bug may break no invariant and still be visible to a caller: also look for
        # the shortest sequence after which the mutant and the spec differ.
        spec_lemmas: list[str] = []
        _progress["stage"] = "the search for a divergence from the spec"
        if args.induction:
            spec_lemmas = induction.lemma_names(induction.prove(cfg, every, None))
        results[bmc_mod.DIVERGENCE] = bmc_mod.divergence(cfg, mname, args.depth,
                                                          assume=spec_lemmas)
        shown.append(bmc_mod.DIVERGENCE)
    rows = [(n, results[n].describe(), f"{results[n].seconds:.2f}") for n in shown]
    print()
    print("\n".join(_table(rows)))
    if report is not None and report.auxiliary_used:
        print("\n  auxiliary invariants of the inductive proof:")
        for a in report.auxiliary_used:
            print(f"    {a}: {AUXILIARY_MEANING[a]}")
    broken = [results[n] for n in shown if results[n].status == "counterexample"]
    for r in broken:
        assert r.counterexample is not None
        print()
        print("\n".join(format_counterexample(r.counterexample)))
        trace = counterexample_trace(cfg, r.counterexample, mname)
        path = args.out / f"prove-{mname or 'spec'}-{cfg.profile.name}-{r.invariant}.json"
        trace.save(path)
        _progress.setdefault("written", []).append(path)
        print(f"  trace: {path}")
    if mutant is not None and not broken:
        print(f"\n  no counterexample: the {mname} mutant survives to depth {args.depth}")
        return 1
    return 1 if broken and mutant is None else 0
