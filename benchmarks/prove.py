"""``kvspec bench prove``: how deep z3's bounded model checking gets, and how fast induction is.

Three tables:

1. BMC depth: for each pool size N (R = 2 requests, tables of L = 3, H = 3 hashes), the
   deepest k at which bounded model checking has shown that no invariant can break,
   within a time budget per run, with one solver and ``push``/``pop`` ("incremental")
   and with a fresh solver per query ("one-shot"). Runs use the checker's defaults
   (auxiliary facts checked as lemmas, symmetry breaking), with no help from induction:
   the depth is what bounded search alone reaches.
2. Induction: the time Houdini takes to prove every invariant at once (wall-clock and
   CPU seconds), the relation's construction included.
3. Mutants: for each symbolic mutant at the default size, the length of the shortest
   counterexample breaking an invariant, and of the shortest sequence after which the
   mutant and the spec differ, with the time to find each and prove it shortest.

Times are wall-clock seconds on this machine, which other work may share; rerun to see
the spread.
"""

from __future__ import annotations

import time

from kvspec.benchmarks._harness import format_machine_info, format_table
from kvspec.conformance.cli import Parser


def _bmc_depth(n: int, budget: float, incremental: bool, max_depth: int) -> tuple[int, float]:
    from kvspec.spec.symbolic.bmc import bmc
    from kvspec.spec.symbolic.model import ModelConfig

    cfg = ModelConfig(num_blocks=n)
    reached: list[tuple[int, float]] = [(-1, 0.0)]
    bmc(cfg, None, None, max_depth, incremental=incremental,
        deadline=time.monotonic() + budget,
        on_depth=lambda k, s: reached.append((k, s)))
    return reached[-1]


def _induction(n: int, budget: float) -> tuple[float, float, list[str]]:
    """(wall seconds, CPU seconds of this process, invariants not proved) for Houdini
    over every invariant and auxiliary fact, the relation's construction included."""
    from kvspec.spec.symbolic.bmc import all_invariant_names
    from kvspec.spec.symbolic.induction import houdini
    from kvspec.spec.symbolic.model import ModelConfig

    cfg = ModelConfig(num_blocks=n)
    t0, c0 = time.monotonic(), time.process_time()
    alive, _dropped, timed_out = houdini(cfg, deadline=t0 + budget)
    wall, cpu = time.monotonic() - t0, time.process_time() - c0
    names = all_invariant_names(cfg)
    unproved = names if timed_out else [nm for nm in names if nm not in alive]
    return wall, cpu, unproved


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


def _search(n: int, budget: float, symmetry: bool) -> tuple[str, int, float]:
    from kvspec.spec.symbolic.explicit import search
    from kvspec.spec.symbolic.model import ModelConfig

    t = time.monotonic()
    r = search(ModelConfig(num_blocks=n), 1000, symmetry=symmetry, deadline=t + budget)
    took = time.monotonic() - t
    depth = f"all ({r.depth}, complete)" if r.complete else str(r.depth)
    return depth, r.worlds, took


def _manager() -> list[list[str]]:
    from kvspec.spec.symbolic import manager_encoding as me
    from kvspec.spec.symbolic.manager_model import ManagerModelConfig

    cfg = ManagerModelConfig()
    t = time.monotonic()
    alive, _secs = me.houdini(cfg)
    proved = time.monotonic() - t
    t = time.monotonic()
    depth, cex = me.bmc(cfg, "hits-not-capped", 8)
    found = time.monotonic() - t
    return [
        ["hit-cap and table-covers-computed proved by induction (s)", f"{proved:.2f}",
         "both" if {"hit-cap", "table-covers-computed"} <= set(alive) else "NOT all"],
        ["hits-not-capped: shortest counterexample (operations, s)",
         f"{depth if cex else 'none'}", f"{found:.2f}"],
    ]


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="kvspec bench prove", description=__doc__.split("\n")[0])
    parser.add_argument("--budget", type=float, default=60.0,
                        help="seconds per BMC run, induction run and search (default 60)")
    parser.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")],
                        default=None, help="pool sizes N for the BMC table (default 6,8)")
    parser.add_argument("--induction-sizes", type=lambda s: [int(x) for x in s.split(",")],
                        default=None, help="pool sizes N for induction (default 8,16,32)")
    parser.add_argument("--one-shot", action="store_true",
                        help="also run BMC with a fresh solver per query (the baseline)")
    parser.add_argument("--mutants", action="store_true",
                        help="also the table of mutants' shortest lengths (minutes)")
    parser.add_argument("--quick", action="store_true",
                        help="seconds, not minutes: tiny budget and sizes (numbers meaningless)")
    args = parser.parse_args(argv)
    budget = 2.0 if args.quick else args.budget
    sizes = args.sizes or ([3, 4] if args.quick else [6, 8])
    isizes = args.induction_sizes or ([4] if args.quick else [8, 16, 32])
    search_n = 4 if args.quick else 8
    max_depth = 60

    print(f"== prove: R=2 requests, L=3 table slots, H=3 hashes, current profile; "
          f"budget {budget:g} s per run")
    print(format_machine_info())
    targets = {6: 16, 8: 12}
    rows: list[list[str]] = []
    for n in sizes:
        k, secs = _bmc_depth(n, budget, True, max_depth)
        row = [str(n), str(k), f"{secs:.1f}"]
        if args.one_shot:
            k1, secs1 = _bmc_depth(n, budget, False, max_depth)
            row += [str(k1), f"{secs1:.1f}"]
        target = targets.get(n)
        row.append(f">= {target}: {'met' if target and k >= target else 'NOT met'}"
                   if target else "")
        rows.append(row)
    print(f"\nBMC: deepest depth k with no invariant broken within {budget:g} s "
          "(no induction lemmas)")
    header = ["N", "incremental k", "at s"]
    if args.one_shot:
        header += ["one-shot k", "at s"]
    print(format_table([*header, "target"], rows))

    print("\nInduction (Houdini over the invariants and auxiliary facts; the relation's "
          "construction included; R=2, L=3, H=3 at every N; the target is judged on CPU "
          "seconds of this process, which other work on the machine inflates less than "
          "wall-clock)")
    irows: list[list[str]] = []
    for n in isizes:
        wall, cpu, unproved = _induction(n, budget)
        done = f"{wall:.2f}" if not unproved else f"> {budget:g}"
        target = (f"< 10 s: {'met' if not unproved and cpu < 10 else 'NOT met'}"
                  if n == 32 else "")
        irows.append([str(n), done, f"{cpu:.2f}",
                      "all" if not unproved else "not all (time out)", target])
    print(format_table(["N", "prove all (s)", "CPU s", "proved", "target"], irows))

    print(f"\nExplicit breadth-first search of the executable model at N={search_n}, "
          f"every invariant checked on every world, {budget:g} s")
    srows = []
    for symmetry in (False, True):
        depth, worlds, took = _search(search_n, budget, symmetry)
        target = "" if not symmetry else (
            f">= 30: {'met' if depth.startswith('all') or int(depth) >= 30 else 'NOT met'}")
        srows.append(["symmetry reduction" if symmetry else "none (baseline)", depth,
                      f"{worlds:,}", f"{took:.1f}", target])
    print(format_table(["reduction", "depth", "worlds", "s", "target"], srows))

    print("\nManager level (N=4, R=2, B=2, T=4)")
    print(format_table(["what", "value", ""], _manager()))

    if args.mutants:
        print("\nMutants: shortest counterexample (default size"
              f"{', quick: N=3, L=2' if args.quick else ''})")
        print(format_table(
            ["mutant", "profile", "length", "broken at that length", "s", "differs after", "s"],
            _mutants(args.quick),
        ))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
