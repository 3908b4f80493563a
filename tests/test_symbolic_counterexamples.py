"""Bounded model checking finds each symbolic mutant's bug, and its length is the shortest.

The length z3 reports must equal a brute-force breadth-first search over the executable
spec (with the mutant's twin), and the decoded trace must replay cleanly on the spec and
fail on the mutant: on its executable twin, and on the conformance zoo's impl mutant.
Two kinds of counterexample: a broken invariant, and a divergence from the spec (for the
bugs that break no invariant, the only kind).
"""

from __future__ import annotations

from dataclasses import replace
from functools import cache

import pytest
from kvspec.conformance.commands.prove import counterexample_trace
from kvspec.conformance.engines.replay import replay_trace
from kvspec.conformance.mutants import MUTANTS as ZOO
from kvspec.conformance.trace import Trace
from kvspec.spec.errors import Refused
from kvspec.spec.invariants import check_all, snapshot
from kvspec.spec.pool import get_cached_block, init_pool
from kvspec.spec.profiles import CLASSIC, CURRENT, get_profile
from kvspec.spec.symbolic.bmc import bmc, divergence
from kvspec.spec.symbolic.explicit import shortest_divergence, shortest_violation
from kvspec.spec.symbolic.model import ModelConfig
from kvspec.spec.symbolic.twins import MUTANTS, SPEC, PoolSemantics, semantics_of

SMALL = {"num_blocks": 3, "table_len": 2, "num_hashes": 3}
DEPTH = 6  # every shortest counterexample at SMALL is at most 5 long

BREAKING = sorted(name for name, m in MUTANTS.items() if m.breaks)
CASES = [(name, get_profile(m.profile or "current")) for name, m in MUTANTS.items()] + [
    (name, CLASSIC)
    for name in ("null-returned-to-queue", "free-of-ref0-goes-negative", "touch-counts-null")
]


@cache
def _first_break(mutant: str, profile_name: str):
    """BMC stopped at the first depth where anything breaks: (depth, broken names, results)."""
    cfg = ModelConfig(profile=get_profile(profile_name), **SMALL)
    results = bmc(cfg, mutant, None, DEPTH, stop_at_first=True)
    found = {n: r for n, r in results.items() if r.status == "counterexample"}
    if not found:
        return None
    k = min(r.depth for r in found.values())
    return k, {n for n, r in found.items() if r.depth == k}, found


@pytest.mark.parametrize(("mutant", "profile"), CASES, ids=[f"{m}-{p.name}" for m, p in CASES])
def test_bmc_shortest_counterexample_equals_breadth_first_search(mutant, profile):
    cfg = ModelConfig(profile=profile, **SMALL)
    brute = shortest_violation(cfg, semantics_of(MUTANTS[mutant]), max_depth=DEPTH)
    got = _first_break(mutant, profile.name)
    assert (None if got is None else got[:2]) == brute
    if mutant in BREAKING and (mutant != "touch-counts-null" or profile is CURRENT):
        assert brute is not None, "every invariant-breaking mutant is found in its profile"
    if not MUTANTS[mutant].breaks:
        assert brute is None, "this mutant breaks no invariant: only divergence finds it"


@cache
def _divergence(mutant: str, profile_name: str):
    cfg = ModelConfig(profile=get_profile(profile_name), **SMALL)
    return divergence(cfg, mutant, DEPTH)


@pytest.mark.parametrize("mutant", sorted(MUTANTS))
def test_bmc_shortest_divergence_from_the_spec_equals_breadth_first_search(mutant):
    profile = get_profile(MUTANTS[mutant].profile or "current")
    cfg = ModelConfig(profile=profile, **SMALL)
    brute = shortest_divergence(cfg, semantics_of(MUTANTS[mutant]), max_depth=DEPTH)
    result = _divergence(mutant, profile.name)
    assert result.status == "counterexample"
    assert result.depth == brute
    found = _first_break(mutant, profile.name)
    if found is not None:
        assert result.depth <= found[0], "a caller sees a bug no later than it breaks a rule"


@pytest.mark.parametrize("profile", [CURRENT, CLASSIC], ids=lambda p: p.name)
def test_the_spec_breaks_nothing_to_depth_4_by_bmc_and_by_search(profile):
    cfg = ModelConfig(profile=profile, **SMALL)
    results = bmc(cfg, None, None, 4)
    assert {r.status for r in results.values()} == {"holds"}
    assert {r.depth for r in results.values()} == {4}
    assert shortest_violation(cfg, SPEC, max_depth=4) is None


# ----------------------------------------------------------------------- trace replay

_CALLS = {
    "get_new_blocks": lambda sem, s, a: sem.get_new_blocks(s, a["num_blocks"]),
    "touch": lambda sem, s, a: sem.touch(s, a["block_ids"]),
    "free_blocks": lambda sem, s, a: sem.free_blocks(s, a["block_ids"]),
    "cache_block": lambda sem, s, a: sem.cache_block(
        s, a["block_id"], a["block_hash"], a.get("parent")),
    "get_cached_block": lambda sem, s, a: get_cached_block(s, a["block_hash"]),
    "reset_prefix_cache": lambda sem, s, a: sem.reset_prefix_cache(s),
    "fork_block": lambda sem, s, a: sem.fork_block(s, a["block_id"]),
}


def replay_pool(trace: Trace, sem: PoolSemantics) -> list[tuple]:
    """Each step's result and observations, and the pool invariants it breaks."""
    s = init_pool(trace.config["num_blocks"], profile=get_profile(trace.config["profile"]))
    seen = []
    for step in trace.steps:
        before = list(s.ref_cnt)
        try:
            result = _CALLS[step.op](sem, s, step.args)
        except (Refused, ValueError):
            result = "refused"
        handed = {}
        if step.op == "get_new_blocks" and result != "refused":
            handed = {b: before[b] for b in result}
        snap = replace(snapshot(s, handed), usage=sem.get_usage(s))
        observed = (result, tuple(s.ref_cnt), tuple(s.block_hash), tuple(s.free_queue),
                    snap.usage)
        seen.append((observed, sorted(check_all(snap))))
    return seen


@pytest.mark.parametrize("mutant", BREAKING)
def test_the_decoded_trace_passes_on_the_spec_and_fails_on_the_mutant_twin(mutant):
    profile = get_profile(MUTANTS[mutant].profile or "current")
    _k, _names, found = _first_break(mutant, profile.name)
    cfg = ModelConfig(profile=profile, **SMALL)
    for result in found.values():
        trace = counterexample_trace(cfg, result.counterexample, mutant)
        on_spec = replay_pool(trace, SPEC)
        assert all(not broken for _obs, broken in on_spec)
        on_twin = replay_pool(trace, semantics_of(MUTANTS[mutant]))
        assert any(
            broken or obs != spec_obs
            for (obs, broken), (spec_obs, _) in zip(on_twin, on_spec, strict=True)
        ) or (not trace.steps and replay_pool_initial_breaks(trace, mutant))


def replay_pool_initial_breaks(trace: Trace, mutant: str) -> bool:
    """A zero-step counterexample: the mutant's initial observation breaks an invariant."""
    s = init_pool(trace.config["num_blocks"], profile=get_profile(trace.config["profile"]))
    snap = replace(snapshot(s), usage=semantics_of(MUTANTS[mutant]).get_usage(s))
    return bool(check_all(snap))


@pytest.mark.parametrize("mutant", sorted(set(BREAKING) & set(ZOO)))
def test_the_decoded_trace_replays_on_impl_and_diverges_on_the_zoos_impl_mutant(mutant):
    profile = get_profile(MUTANTS[mutant].profile or "current")
    _k, _names, found = _first_break(mutant, profile.name)
    cfg = ModelConfig(profile=profile, **SMALL)
    result = next(iter(found.values()))
    trace = counterexample_trace(cfg, result.counterexample, mutant)
    assert replay_trace(trace, "impl").ok
    assert not replay_trace(trace, ZOO[mutant].factory).ok


def test_a_counterexample_trace_survives_the_file_format(tmp_path):
    _k, _names, found = _first_break("forward-free", "current")
    cfg = ModelConfig(**SMALL)
    trace = counterexample_trace(cfg, found["eviction-order"].counterexample, "forward-free")
    loaded = Trace.load(trace.save(tmp_path / "t.json"))
    assert loaded.to_json() == trace.to_json()
    cache_steps = [s for s in loaded.steps if s.op == "cache_block"]
    assert cache_steps[0].args["parent"] is None
    assert cache_steps[1].args["parent"] == cache_steps[0].args["block_hash"]


@pytest.mark.parametrize("mutant", sorted(set(MUTANTS) & set(ZOO)))
def test_the_divergence_trace_replays_on_impl_and_diverges_on_the_zoos_impl_mutant(mutant):
    profile = get_profile(MUTANTS[mutant].profile or "current")
    cfg = ModelConfig(profile=profile, **SMALL)
    trace = counterexample_trace(cfg, _divergence(mutant, profile.name).counterexample, mutant)
    assert replay_trace(trace, "impl").ok
    assert not replay_trace(trace, ZOO[mutant].factory).ok
