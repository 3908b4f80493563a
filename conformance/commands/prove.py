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
    parser.add_argument("--level", choices=("pool", "manager"), default="pool",
                        help="pool: the pool invariants over request operations (default); "
                             "manager: hit-cap and table-covers-computed over tokens")
    parser.add_argument("--block-size", type=int, default=2, metavar="B",
                        help="tokens per block, manager level (default 2)")
    parser.add_argument("--max-tokens", type=int, default=4, metavar="T",
                        help="most tokens a request holds, manager level (default 4)")
    parser.add_argument("--blocks", type=int, default=4, metavar="N",
                        help="pool size N, the null block included (default 4)")
    parser.add_argument("--requests", type=int, default=2, metavar="R",
                        help="number of requests (default 2)")
    parser.add_argument("--table-len", type=int, default=3, metavar="L",
                        help="longest block table (default 3)")
    parser.add_argument("--hashes", type=int, default=3, metavar="H",
                        help="number of content hashes, a heap-numbered tree (default 3)")
    parser.add_argument("--no-caching", action="store_true",
                        help="the pool with prefix caching off (enable_caching=False)")
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
    parser.add_argument("--cross-check-worlds", type=int, default=60, metavar="W",
                        help="worlds of the spec cross-checked against z3 before any proof, "
                             "besides the first world of each path (default 60)")
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
            "enable_caching": cfg.enable_caching,
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


def _qualifier(cfg: ModelConfig, width: int, name: str, mutant: str | None = None) -> str:
    """What a "proved" row is a proof of: this finite instance of the model, which was
    cross-checked against the spec before the proof ran."""
    from kvspec.spec.symbolic.model import DISCIPLINED

    where = (f"N={cfg.num_blocks}, R={cfg.num_requests}, L={cfg.table_len}, "
             f"H={cfg.num_hashes} ({width}-bit)"
             + ("" if cfg.enable_caching else ", caching off"))
    scope = ", under the chain discipline" if name in DISCIPLINED else ""
    against = f"the {mutant} twin" if mutant else "spec"
    return f"for {where}{scope}, model cross-checked against {against}"


def run(args: argparse.Namespace) -> int:
    from kvspec.conformance.commands import writable_path

    if not args.list_mutants:  # before any proof runs, not after
        writable_path(args.out, "--out", folder=True)
    try:
        with _z3_interrupts():
            return _run(args)
    except KeyboardInterrupt:
        where = _PROGRESS.get("where", "before any result")
        print(f"\nkvspec prove: interrupted at {where}; nothing above is a result")
        return 130


@contextlib.contextmanager
def _z3_interrupts() -> Iterator[None]:
    """Ctrl-C that Python drops (raised inside a z3 object's ``__del__``, it is reported as
    "ignored" and the proof goes on) is raised again at the next z3 query
    (:class:`~kvspec.conformance.interrupts.CtrlC`), and one that z3 caught inside a query
    is raised when the query returns, whichever caller asked it."""
    import z3
    from kvspec.conformance.interrupts import CtrlC
    from kvspec.spec.symbolic.encoding import raise_if_interrupted

    check = z3.Solver.check

    def checked(self: z3.Solver, *assumptions: Any) -> Any:
        ctrl_c.check()
        verdict = check(self, *assumptions)
        if verdict == z3.unknown:  # z3 answers "unknown" to a press it caught itself
            raise_if_interrupted(self)
        return verdict

    z3.Solver.check = checked  # type: ignore[method-assign]
    try:
        with CtrlC() as ctrl_c:
            yield
            ctrl_c.check()
    finally:
        z3.Solver.check = check  # type: ignore[method-assign]


#: Where the run is, for the message an interrupt prints.
_PROGRESS: dict[str, str] = {}

#: Exit statuses: a check before any proof failed, or z3 and the spec drifted apart.
MODEL_ERROR = 3


def _run(args: argparse.Namespace) -> int:
    from kvspec.spec.profiles import get_profile
    from kvspec.spec.symbolic import bmc as bmc_mod
    from kvspec.spec.symbolic import induction
    from kvspec.spec.symbolic.encoding import AUXILIARY_MEANING
    from kvspec.spec.symbolic.model import NOT_MODELLED, REQUEST_INVARIANTS, ModelConfig
    from kvspec.spec.symbolic.sanity import sanity_check, strengthening_failures
    from kvspec.spec.symbolic.twins import MUTANTS, get_mutant

    _PROGRESS.clear()
    if args.level == "manager":
        from kvspec.conformance.commands import prove_manager

        _PROGRESS["where"] = "the manager-level proof"
        return prove_manager.run(args)
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
            num_hashes=args.hashes, profile=profile, enable_caching=not args.no_caching,
        )
        if args.depth < 0:
            raise ValueError(f"--depth must be at least 0, got {args.depth}")
        if args.cross_check_worlds < 1:
            raise ValueError(
                f"--cross-check-worlds must be at least 1, got {args.cross_check_worlds}")
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
    print("  not modelled (the machines of kvspec check do these):")
    for what, why in NOT_MODELLED.items():
        print(f"    - {what}: {why}")
    print(f"  model-only invariants (over the modelled requests): "
          f"{', '.join(REQUEST_INVARIANTS)}")

    _PROGRESS["where"] = "the checks before any proof"
    sanity = sanity_check(cfg, mname, max_worlds=args.cross_check_worlds)
    for line in sanity.describe():
        print(f"  {line}")
    if not sanity.ok:
        _refuse(sanity.failures)
        return MODEL_ERROR

    results: dict[str, Result] = {}
    assume: list[str] = []
    report = None
    width = induction.DEFAULT_WIDTH
    if args.induction:
        _PROGRESS["where"] = "the induction proof"
        report = induction.prove(cfg, names, mname)
        failed = strengthening_failures(cfg, sanity.worlds, report.survivors, mname)
        if failed:
            _refuse(failed)
            return MODEL_ERROR
        for name in report.proved:
            results[name] = bmc_mod.Result(
                name, "proved", -1, report.seconds[name], None,
                f"by induction {_qualifier(cfg, width, name, mname)}")
        assume = induction.lemma_names(report)
    todo = [n for n in names if n not in results]
    try:
        if todo:
            started = time.monotonic()
            _PROGRESS["where"] = "depth 0 of bounded model checking"

            def progress(k: int, _seconds: float) -> None:
                _PROGRESS["where"] = f"depth {k + 1} of bounded model checking"

            found = bmc_mod.bmc(cfg, mname, todo, args.depth, incremental=not args.one_shot,
                                assume=assume, stop_at_first=not args.all_counterexamples,
                                on_depth=progress)
            results.update(found)
            bits = bmc_mod.width_for(cfg, args.depth)
            if report is not None:
                # k-induction for what held to the full depth: BMC covered the base case.
                for name in todo:
                    r = results[name]
                    if r.status != "holds" or r.depth < args.depth:
                        continue
                    _PROGRESS["where"] = f"k-induction of {name}"
                    for k in range(2, min(4, args.depth + 1) + 1):
                        verdict = induction.k_induction(cfg, name, report.survivors, k, mname)
                        if str(verdict) == "unsat":
                            r.status = "proved"
                            r.method = (f"by {k}-induction "
                                        f"{_qualifier(cfg, bits, name, mname)}")
                            break
                    r.seconds = time.monotonic() - started

        shown = list(names)
        if mutant is not None:
            # A bug may break no invariant and still be visible to a caller: also look for
            # the shortest sequence after which the mutant and the spec differ.
            spec_lemmas: list[str] = []
            if args.induction:
                _PROGRESS["where"] = "the induction proof of the spec"
                spec_lemmas = induction.lemma_names(induction.prove(cfg, every, None))
            _PROGRESS["where"] = "the search for a divergence from the spec"
            results[bmc_mod.DIVERGENCE] = bmc_mod.divergence(cfg, mname, args.depth,
                                                              assume=spec_lemmas)
            shown.append(bmc_mod.DIVERGENCE)
    except bmc_mod.ModelDrift as exc:
        _refuse([f"model drift found while decoding a counterexample: {exc}"])
        return MODEL_ERROR
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
        print(f"  trace: {path}")
    if mutant is not None and not broken:
        print(f"\n  no counterexample: the {mname} mutant survives to depth {args.depth}")
        return 1
    return 1 if broken and mutant is None else 0


def _refuse(failures: list[str]) -> None:
    print("\nkvspec prove: refusing to prove anything; a check of the model failed:")
    for f in failures:
        print(f"  - {f}")
