"""The hybrid level: several KV-cache groups sharing one pool, used the way a user uses it."""

from __future__ import annotations

import pytest
from kvspec.conformance.engines.pipeline import run_check
from kvspec.conformance.hybrid.driver import HybridConfig, start_driver
from kvspec.conformance.hybrid.harness import longest_group_hit, search_passes
from kvspec.conformance.hybrid.targets import (
    hybrid_factory_for,
    impl_hybrid_factory,
    load_hybrid_factory,
)
from kvspec.conformance.levels import get_level
from kvspec.conformance.mutants.hybrid import FixedPointOnePass, TouchAndAllocatePerGroup
from kvspec.conformance.outcome import Divergence, OutsideScope
from kvspec.conformance.trace import Step, Trace
from kvspec.spec import hybrid as sh
from kvspec.spec import hybrid_invariants as hi

FA2_FA4 = (("full", 2, None), ("full", 4, None))
FA4_SW2 = (("full", 4, None), ("sliding", 2, 3))

#: The sequence kvspec check found against vLLM 0.22.1 (docs/upstream-divergences.md):
#: at step 10 group 0's blocks for the connector's tokens are popped from the free queue
#: before group 1 has touched its hit, so the hit block 3 lands in both groups' tables.
DOUBLE_HANDOUT = [
    Step("add_request", {"request_id": "r0", "prompt_token_ids": [1, 2, 3, 4, 5]}),
    Step("allocate_slots", {"request_id": "r0", "num_new_tokens": 2,
                            "num_lookahead_tokens": 2, "num_external_computed_tokens": 1}),
    Step("preempt", {"request_id": "r0"}),
    Step("allocate_slots", {"request_id": "r0", "num_new_tokens": 1,
                            "num_external_computed_tokens": 3}),
    Step("add_request", {"request_id": "r4", "prompt_token_ids": [1]}),
    Step("preempt", {"request_id": "r0"}),
    Step("allocate_slots", {"request_id": "r4", "num_new_tokens": 1}),
    Step("preempt", {"request_id": "r4"}),
    Step("get_computed_blocks", {"request_id": "r0"}),
    Step("allocate_slots", {"request_id": "r0", "num_new_tokens": 0,
                            "num_new_computed_tokens": 4, "new_computed_blocks": [[6, 4], [3]],
                            "num_external_computed_tokens": 3}),
]


@pytest.mark.parametrize("profile", ["current", "classic"])
def test_impl_hybrid_coordinator_conforms_to_the_spec(profile: str) -> None:
    result = run_check(impl_hybrid_factory, level="hybrid", profile=profile, max_examples=40,
                       seed=3, database=None, progress=False, exhaustive=False)
    assert result.passed, result.failure
    assert result.stats.steps > 1000
    assert set(hi.HYBRID_INVARIANTS) <= set(result.stats.invariant_checks)
    assert {"external-tokens", "sliding-hit-with-nulls", "window-slid",
            "hit-on-evictable-block", "preemption"} <= set(result.stats.situations)


def test_every_named_situation_is_reached_under_the_ci_profile() -> None:
    """The hit search's hard cases included: a window's hit cut short by a group searched
    after it, and a second pass over the groups changing the hit (where a search that
    stops after one pass is wrong)."""
    result = run_check(impl_hybrid_factory, level="hybrid", settings_name="ci", seed=0,
                       database=None, progress=False, exhaustive=False)
    assert result.passed, result.failure
    missing = [s for s in result.situations if not result.stats.situations[s]]
    assert not missing, f"not reached under ci: {missing}"


def test_a_hit_ends_on_a_boundary_of_every_group() -> None:
    """Full attention at 4 tokens per block beside a window at 2: 10 cached tokens give a
    hit of 8 (two blocks of 4, four of 2), never 10, which would end mid-block at 4."""
    m = sh.init_hybrid(20, [sh.GroupSpec("full", 4), sh.GroupSpec("sliding", 2, 3)])
    first = sh.new_request(m, "a", range(10))
    assert sh.allocate_slots(m, first, 10) is not None
    again = sh.new_request(m, "b", [*range(10), 99])
    hits, num = sh.get_computed_blocks(m, again)
    assert num == 8 and len(hits[0]) == 2 and len(hits[1]) == 4


def test_a_sliding_hit_holds_only_the_window_and_nulls_before_it() -> None:
    """A window of 3 tokens at block size 2 reads one block before the hit's end: the
    earlier positions are the null block, nothing to adopt."""
    m = sh.init_hybrid(20, [sh.GroupSpec("full", 2), sh.GroupSpec("sliding", 2, 3)])
    assert sh.allocate_slots(m, sh.new_request(m, "a", range(8)), 8) is not None
    hits, num = sh.get_computed_blocks(m, sh.new_request(m, "b", [*range(8), 99]))
    assert num == 8
    assert hits[1][:3] == [sh.NULL_BLOCK] * 3 and hits[1][3] != sh.NULL_BLOCK


def test_blocks_out_of_the_window_are_given_back_as_nulls() -> None:
    m = sh.init_hybrid(20, [sh.GroupSpec("full", 2), sh.GroupSpec("sliding", 2, 3)])
    req = sh.new_request(m, "a", range(8))
    assert sh.allocate_slots(m, req, 8) is not None
    req.num_computed_tokens = 8
    req.append_output_token_ids([50])
    held = sh.get_block_ids(m, "a")[1]
    assert sh.allocate_slots(m, req, 1) is not None
    # 8 computed tokens: the window of the next token starts at token 6 (block 3).
    assert sh.get_block_ids(m, "a")[1][:3] == [sh.NULL_BLOCK] * 3
    assert all(m.pool.ref_cnt[b] == 0 for b in held[:3])


def test_external_tokens_get_blocks_after_every_hit_is_adopted() -> None:
    """The trace found against vLLM 0.22.1 passes on impl (two-phase admission) and puts
    one block in two groups' tables when groups adopt and allocate one after the other."""
    config = HybridConfig(7, FA2_FA4, profile="classic")
    driver = start_driver(impl_hybrid_factory, config)
    for step in DOUBLE_HANDOUT:
        driver.apply(step)
    broken = start_driver(hybrid_factory_for(TouchAndAllocatePerGroup), config)
    with pytest.raises(Divergence) as caught:
        for step in DOUBLE_HANDOUT:
            broken.apply(step)
    assert caught.value.caught_by == "one-group-per-block"
    assert caught.value.step_index == len(DOUBLE_HANDOUT)


#: A connector's tokens carry the request past blocks the narrower (later) window never
#: fills, so that window serves only the shorter prefix that another request cached.
WINDOW_GAP = [
    Step("add_request", {"request_id": "a", "prompt_token_ids": [0, 1, 2]}),
    Step("allocate_slots", {"request_id": "a", "num_new_tokens": 3}),
    Step("add_request", {"request_id": "b", "prompt_token_ids": list(range(7))}),
    Step("allocate_slots", {"request_id": "b", "num_new_tokens": 1,
                            "num_external_computed_tokens": 5}),
    Step("add_request", {"request_id": "c", "prompt_token_ids": [0, 1, 2, 3, 4, 99]}),
    Step("get_computed_blocks", {"request_id": "c"}),
]


def test_a_later_window_that_cuts_the_hit_makes_the_search_come_back() -> None:
    """Windows of 3 then 2 tokens, both at 2 per block: the first serves 4 tokens of c,
    the second only 2, and at 2 tokens the first window reads block 0, not the block 1 it
    held at 4. The coverage helpers say so; a one-pass search answers wrongly."""
    config = HybridConfig(8, (("sliding", 2, 3), ("sliding", 2, 2)))
    driver = start_driver(impl_hybrid_factory, config)
    for step in WINDOW_GAP[:-1]:
        driver.apply(step)
    m, req = driver.spec, driver.requests["c"]
    assert [longest_group_hit(m, req, gid, 5) for gid in (0, 1)] == [4, 2]
    changes, first_pass = search_passes(m, req, 5)
    assert first_pass == {0: 4, 1: 2} and changes == 1
    hits, num = sh.get_computed_blocks(m, req)
    assert num == 2 and sh.NULL_BLOCK not in hits[0]
    assert (sh.group_hit(m, req, 0, 4) or [])[:1] == [sh.NULL_BLOCK]
    driver.apply(WINDOW_GAP[-1])
    broken = start_driver(hybrid_factory_for(FixedPointOnePass), config)
    with pytest.raises(Divergence) as caught:
        for step in WINDOW_GAP:
            broken.apply(step)
    assert caught.value.caught_by == "computed-blocks"


def test_hybrid_traces_round_trip_through_json() -> None:
    config = HybridConfig(7, FA2_FA4, profile="classic")
    trace = Trace("hybrid", config.to_json(), DOUBLE_HANDOUT)
    again = Trace.from_json(trace.to_json())
    assert again.steps == DOUBLE_HANDOUT
    assert get_level("hybrid").config_from_json(again.config) == config


def test_the_cross_group_invariant_names_both_tables() -> None:
    snap = hi.HybridSnapshot(
        groups=(sh.GroupSpec("full", 2), sh.GroupSpec("full", 4)), num_blocks=4,
        ref_cnt=(0, 0, 0, 2),
        requests=(hi.RequestView("r0", (1, 2, 3, 4), ((1, 3), (3,)), 4),),
        hits=(), content={})
    assert hi.one_group_per_block(snap) == [
        "block 3 is in the tables of groups [0, 1]: 'r0' group 0 position 1, "
        "'r0' group 1 position 0"]
    assert hi.references_counted(snap) == [
        "block 1 has ref_cnt 0 but 1 table slot(s) hold it"]


def test_load_hybrid_factory_names_impl_and_refuses_other_levels() -> None:
    assert load_hybrid_factory("impl") is impl_hybrid_factory
    with pytest.raises(Exception, match="manager-level factory"):
        load_hybrid_factory("kvspec.conformance.manager.targets:impl_manager_factory")


def test_impl_refuses_a_window_list_of_the_wrong_length() -> None:
    from kvspec.impl.coordinator import HybridKVCacheCoordinator
    from kvspec.impl.errors import InvalidArgumentError

    with pytest.raises(InvalidArgumentError, match="one entry per group"):
        HybridKVCacheCoordinator(8, [2, 4], sliding_windows=[3])


def test_a_trace_adopting_hits_beyond_the_cap_is_outside_the_scope() -> None:
    driver = start_driver(impl_hybrid_factory, HybridConfig(8, FA4_SW2))
    driver.apply(Step("add_request", {"request_id": "r", "prompt_token_ids": [1, 2, 3, 4]}))
    driver.apply(Step("get_computed_blocks", {"request_id": "r"}))
    from kvspec.conformance.outcome import OutsideScope

    with pytest.raises(OutsideScope):
        driver.apply(Step("allocate_slots", {
            "request_id": "r", "num_new_tokens": 1, "num_new_computed_tokens": 4,
            "new_computed_blocks": [[1], [2, 3]]}))


def test_the_worked_example_of_docs_hybrid_md() -> None:
    """docs/hybrid.md's numbers, step by step."""
    m = sh.init_hybrid(20, [sh.GroupSpec("full", 4), sh.GroupSpec("sliding", 2, 3)])
    assert (m.hash_block_size, m.alignment) == (2, 4)
    a = sh.new_request(m, "a", range(10))
    assert len(a.block_hashes) == 5
    assert sh.allocate_slots(m, a, 10) == [[1, 2, 3], [4, 5, 6, 7, 8]]
    assert [b for b in range(20) if m.pool.block_hash[b] is not None] == [1, 2, 5, 7]
    a.num_computed_tokens = 10
    sh.free(m, "a")
    b = sh.new_request(m, "b", [*range(10), 99])
    hits, num = sh.get_computed_blocks(m, b)
    assert (hits, num) == ([[1, 2], [0, 0, 0, 7]], 8)
    assert sh.allocate_slots(m, b, 3, num, hits) == [[8], [6, 4]]
    assert sh.get_block_ids(m, "b") == [[1, 2, 8], [0, 0, 0, 7, 6, 4]]


def test_a_finished_request_is_never_scheduled_again() -> None:
    """Freed with computed tokens, a request has finished (preemption zeroes them): the
    exhaustive engine once allocated for it again, and the spec null-padded the window's
    skipped blocks where impl gave real ones, a false alarm (thorough, depth 5)."""
    driver = start_driver(impl_hybrid_factory,
                          HybridConfig(6, (("full", 2, None), ("sliding", 2, 3))))
    for step in [Step("add_request", {"request_id": "r0", "prompt_token_ids": [1, 2, 3, 4]}),
                 Step("allocate_slots", {"request_id": "r0", "num_new_tokens": 3}),
                 Step("set_num_computed_tokens", {"request_id": "r0",
                                                  "num_computed_tokens": 4}),
                 Step("free", {"request_id": "r0"})]:
        driver.apply(step)
    with pytest.raises(OutsideScope, match="finished"):
        driver.apply(Step("allocate_slots", {"request_id": "r0", "num_new_tokens": 1}))
