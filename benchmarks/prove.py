"""``kvspec bench prove``: how deep z3's bounded model checking gets, and how fast induction is.

Three tables:

1. BMC depth: for each pool size N (R = 2 requests, tables of L = 3, H = 3 hashes), the
   deepest k at which bounded model checking has shown that no invariant can break,
   within a time budget per run, with one solver and ``push``/``pop`` ("incremental")
   and with a fresh solver per query ("one-shot"). Runs use the checker's defaults
   (auxiliary facts checked as lemmas, symmetry breaking), with no help from induction:
   the depth is what bounded search alone reaches.
2. Induction: the time Houdini takes to prove every invariant at once, and for each
   invariant, the time of its own consecution query (one step from the inductive set).
3. Mutants: for each symbolic mutant at the default size, the length of the shortest
   counterexample breaking an invariant, and of the shortest sequence after which the
   mutant and the spec differ, with the time to find each and prove it shortest.

Times are wall-clock seconds on this machine, which other work may share; rerun to see
the spread.
"""

from __future__ import annotations

import argparse
import time

from kvspec.benchmarks._harness import format_machine_info, format_table


def _bmc_depth(n: int, budget: float, incremental: bool, max_depth: int) -> tuple[int, float]:
    from kvspec.spec.symbolic.bmc import bmc
    from kvspec.spec.symbolic.model import ModelConfig

    cfg = ModelConfig(num_blocks=n)
    reached: list[tuple[int, float]] = [(-1, 0.0)]
    bmc(cfg, None, None, max_depth, incremental=incremental,
        deadline=time.monotonic() + budget,
        on_depth=lambda k, s: reached.append((k, s)))
    return reached[-1]


def _induction(n: int, budget: float) -> tuple[float, dict[str, float], list[str]]:
    import z3
    from kvspec.spec.symbolic.encoding import SymState, auxiliary_terms, invariant_terms, transition
    from kvspec.spec.symbolic.induction import DEFAULT_WIDTH, houdini
    from kvspec.spec.symbolic.model import ModelConfig

    cfg = ModelConfig(num_blocks=n)
    t0 = time.monotonic()
    alive, dropped, timed_out = houdini(cfg, deadline=t0 + budget)
    total = time.monotonic() - t0
    names = list(invariant_terms(SymState(cfg, "names")))
    if timed_out:
        return total, {}, names
    s0, s1 = SymState(cfg, "b0", DEFAULT_WIDTH), SymState(cfg, "b1", DEFAULT_WIDTH)
    pre = {**invariant_terms(s0), **auxiliary_terms(s0)}
    post = {**invariant_terms(s1), **auxiliary_terms(s1)}
    solver = z3.SolverFor("QF_BV")
    solver.add(*transition(s0, s1, s0.op_var("op")))
    solver.add(*[pre[a] for a in alive])
    each: dict[str, float] = {}
    for name in names:
        if name not in alive:
            continue
        t = time.monotonic()
        solver.push()
        solver.add(z3.Not(post[name]))
        verdict = solver.check()
        solver.pop()
        if verdict == z3.unsat:
            each[name] = time.monotonic() - t
    unproved = [nm for nm in names if nm not in each]
    return total, each, unproved


def _mutants(quick: bool) -> list[list[str]]:
    from kvspec.spec.profiles import get_profile
    from kvspec.spec.symbolic.bmc import bmc, divergence
    from kvspec.spec.symbolic.model import ModelConfig
    from kvspec.spec.symbolic.twins import MUTANTS

    rows: list[list[str]] = []
    for name, m in MUTANTS.items():
        cfg = ModelConfig(num_blocks=3 if quick else 4, table_len=2 if quick else 3,
                          profile=get_profile(m.profile or "current"))
        t = time.monotonic()
        # Stop at the first depth where anything breaks: that depth is the shortest length.
        results = bmc(cfg, name, None, 8, stop_at_first=True)
        took = time.monotonic() - t
        found = {r.invariant: r.depth for r in results.values() if r.status == "counterexample"}
        t = time.monotonic()
        differs = divergence(cfg, name, 8)
        took_divergence = time.monotonic() - t
        row = [name, cfg.profile.name]
        if found:
            k = min(found.values())
            row += [str(k), ", ".join(sorted(n for n, d in found.items() if d == k))]
        else:
            row += ["none to 8", ""]
        row += [f"{took:.2f}", differs.describe().replace("counterexample of length ", ""),
                f"{took_divergence:.2f}"]
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kvspec bench prove", description=__doc__.split("\n")[0])
    parser.add_argument("--budget", type=float, default=60.0,
                        help="seconds per BMC run and per induction run (default 60)")
    parser.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")],
                        default=None, help="pool sizes N (default 4,6,8)")
    parser.add_argument("--quick", action="store_true",
                        help="seconds, not minutes: tiny budget and sizes (numbers meaningless)")
    args = parser.parse_args(argv)
    budget = 2.0 if args.quick else args.budget
    sizes = args.sizes or ([3, 4] if args.quick else [4, 6, 8])
    max_depth = 40

    print(f"== prove: R=2 requests, L=3 table slots, H=3 hashes, current profile; "
          f"budget {budget:g} s per run")
    print(format_machine_info())
    rows: list[list[str]] = []
    for n in sizes:
        row = [str(n)]
        for incremental in (True, False):
            k, secs = _bmc_depth(n, budget, incremental, max_depth)
            row += [str(k), f"{secs:.1f}"]
        rows.append(row)
        print(f"  N={n}: done", flush=True)
    print("\nBMC: deepest depth k with no invariant broken (all invariants checked at each k)")
    print(format_table(
        ["N", "incremental k", "at s", "one-shot k", "at s"], rows,
    ))

    print("\nInduction (Houdini over the invariants and auxiliary facts)")
    irows: list[list[str]] = []
    names: list[str] = []
    per: dict[int, dict[str, float]] = {}
    for n in sizes:
        total, each, unproved = _induction(n, budget)
        per[n] = each
        names = names or list(each) + unproved
        irows.append([str(n), f"{total:.2f}", "all" if not unproved else ", ".join(unproved)])
    print(format_table(["N", "prove all (s)", "not proved"], irows))
    print("\nPer invariant: seconds of its consecution query (one step from the inductive set)")
    print(format_table(
        ["invariant", *[f"N={n}" for n in sizes]],
        [[nm, *[f"{per[n][nm]:.2f}" if nm in per[n] else "-" for n in sizes]] for nm in names],
    ))

    print("\nMutants: shortest counterexample (default size"
          f"{', quick: N=3, L=2' if args.quick else ''})")
    print(format_table(
        ["mutant", "profile", "length", "broken at that length", "s", "differs after", "s"],
        _mutants(args.quick),
    ))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
