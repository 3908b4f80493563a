"""``kvspec prove --level manager``: the hit cap and computed-token coverage, with z3.

The model (:mod:`kvspec.spec.symbolic.manager_model`, encoded in
:mod:`kvspec.spec.symbolic.manager_encoding`) is requests with tokens over a block size,
run by the spec's manager. Before any proof the abstraction is cross-checked against
the spec; then Houdini looks for an inductive set holding both invariants; what it
does not prove, bounded model checking searches, and a counterexample is re-run on the
executable spec (or mutant) and written as a manager-level ``kvspec-trace``.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kvspec.conformance.trace import Trace
    from kvspec.spec.symbolic.manager_encoding import ManagerCounterexample
    from kvspec.spec.symbolic.manager_model import ManagerModelConfig

#: What the manager model leaves out; printed above every proof.
NOT_MODELLED = {
    "contents other than one token stream; LoRA adapters, salts, multimodal inputs": (
        "every prompt is a prefix of one stream; neither invariant reads content"),
    "which blocks a request gets; the free queue's order": (
        "abstracted to a free count; the pool level proves the pool's invariants"),
    "lookahead tokens, chunked prefill, preemption, max_model_len, caching off": (
        "not modelled"),
    "the other manager invariants (hit-content, shared-iff-counted, stats-match-hits)": (
        "not modelled"),
}

ABSTRACTION = (
    "the free count, which hashes a lookup finds, and per request its tokens, computed "
    "tokens, table length and cached blocks; how many hits are evictable, which hashes a "
    "pop evicts and how many blocks a free returns are left open (the relation admits "
    "every step of the spec, and may admit more)"
)


def trace_of(cfg: ManagerModelConfig, cex: ManagerCounterexample, mutant: str | None
             ) -> Trace:
    """The protocol calls of a counterexample. A hit-cap violation is visible in the
    lookup's answer, so the trace ends with that ``get_computed_blocks``: what the
    request does with an over-long hit is no longer the scheduler's protocol."""
    from kvspec.conformance.trace import Step, Trace

    calls = [c for op_calls in cex.calls[:-1] for c in op_calls]
    last = cex.calls[-1] if cex.calls else []
    if cex.invariant == "hit-cap":
        cut = next(i for i, (op, _a) in enumerate(last) if op == "get_computed_blocks")
        last = last[: cut + 1]
    calls += last
    source = f"the {mutant} mutant" if mutant else "the spec"
    ops = "; ".join(f"{i}. {o.describe()}" for i, o in enumerate(cex.ops, 1))
    note = (f"kvspec prove --level manager: a shortest counterexample ({len(cex.ops)} request "
            f"operations) by which {source} breaks {cex.invariant}, at {cfg.describe()}. "
            f"Operations: {ops}. Broken: {cex.violations[0]}")
    return Trace(
        level="manager",
        config={"num_blocks": cfg.num_blocks, "block_size": cfg.block_size,
                "profile": cfg.profile.name},
        steps=[Step(op, dict(args)) for op, args in calls],
        note=note,
    )


def run(args: argparse.Namespace) -> int:
    from kvspec.spec.profiles import get_profile
    from kvspec.spec.symbolic import manager_encoding as me
    from kvspec.spec.symbolic.manager_model import (
        INVARIANTS,
        MUTANTS,
        ManagerModelConfig,
        semantics,
    )

    if args.list_mutants:
        print("  hits-not-capped  get_computed_blocks caps hits at num_tokens // block_size")
        return 0
    try:
        semantics(args.mutant)
        cfg = ManagerModelConfig(
            num_blocks=args.blocks, num_requests=args.requests, block_size=args.block_size,
            max_tokens=args.max_tokens, profile=get_profile(args.profile or "current"),
        )
        if args.depth < 0:
            raise ValueError(f"--depth must be at least 0, got {args.depth}")
        names = args.invariant or list(INVARIANTS)
        unknown = sorted(set(names) - set(INVARIANTS))
        if unknown:
            raise ValueError(f"unknown invariant(s) {unknown}; the manager model has "
                             f"{list(INVARIANTS)}")
    except ValueError as exc:
        print(f"kvspec prove: {exc}")
        return 2
    mutant = args.mutant
    print(f"kvspec prove --level manager: {cfg.describe()}")
    print(f"  model: {'mutant ' + mutant if mutant in MUTANTS else 'the spec'}")
    print(f"  abstraction: {ABSTRACTION}")
    print("  not modelled:")
    for what, why in NOT_MODELLED.items():
        print(f"    - {what}: {why}")
    sanity = me.sanity_check(cfg, mutant)
    fired = ", ".join(f"{k}@{d}" for k, d in sanity.fired.items())
    source = f"the {mutant} twin" if mutant else "the spec"
    print(f"  cross-checked against {source}: every step it takes from "
          f"{len(sanity.worlds)} explored worlds ({sanity.pairs} steps) is admitted; "
          f"{sanity.seconds:.1f} s")
    print(f"  operations first admitted at depth: {fired}")
    if sanity.failures:
        print("\nkvspec prove: refusing to prove anything; a check of the model failed:")
        for f in sanity.failures:
            print(f"  - {f}")
        return 3
    proved: list[str] = []
    if args.induction:
        survivors, seconds = me.houdini(cfg, mutant)
        proved = [n for n in names if n in survivors]
    rows: list[tuple[str, str]] = []
    against = f"the {mutant} twin" if mutant else "spec"
    qualifier = f"for {cfg.short()} (8-bit), abstraction cross-checked against {against}"
    for n in proved:
        rows.append((n, f"proved by induction {qualifier}"))
    cex = None
    todo = [n for n in names if n not in proved]
    if todo:
        lemmas = [] if not args.induction else [
            a for a in survivors if a in me.auxiliary_terms(me.MState(cfg, "names"))]
        try:
            depth, cex = me.bmc(cfg, mutant, args.depth, assume=lemmas)
        except me.AbstractionGap as exc:
            print(f"\nkvspec prove: refusing to report a counterexample: abstraction gap: {exc}")
            return 3
        for n in todo:
            if cex is not None and cex.invariant == n:
                rows.append((n, f"counterexample of length {depth} (confirmed on the "
                                "executable model)"))
            else:
                stop = " (search stopped where another invariant broke)" if cex else ""
                rows.append((n, f"holds to depth {depth if cex is None else depth - 1}{stop}"))
    order = {n: i for i, n in enumerate(names)}
    rows.sort(key=lambda r: order[r[0]])
    width = max(len(r[0]) for r in rows)
    print()
    for n, what in rows:
        print(f"  {n:<{width}}  {what}")
    if cex is not None:
        print(f"\ncounterexample for {cex.invariant}, {len(cex.ops)} step(s):")
        for i, (op, calls) in enumerate(zip(cex.ops, cex.calls, strict=True), 1):
            shown = ", ".join(name for name, _a in calls)
            print(f"  {i}. {op.describe():<22} {shown}")
        for v in cex.violations:
            print(f"  broken: {v}")
        trace = trace_of(cfg, cex, mutant)
        path = args.out / f"prove-manager-{mutant or 'spec'}-{cex.invariant}.json"
        trace.save(path)
        print(f"  trace: {path}")
        return 0 if mutant else 1
    return 1 if mutant else 0
