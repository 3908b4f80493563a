"""Upstream vLLM 0.33.0's KVCacheManager, driven through the manager protocol.

vLLM is an optional target (``scripts/install-vllm-target.sh``), so this module runs only
where it is installed. docs/upstream-divergences.md reports the long runs these tests
sample, and what upstream does with the bad input the suite switches off for it.
"""

from __future__ import annotations

import sys

import pytest

pytest.importorskip("vllm")

from kvspec.conformance.engines.pipeline import run_check  # noqa: E402
from kvspec.conformance.manager.driver import ManagerConfig, replay_steps  # noqa: E402
from kvspec.conformance.manager.protocol import ManagerTarget, UnknownRequestError  # noqa: E402
from kvspec.conformance.manager.targets import factory_level, load_manager_factory  # noqa: E402
from kvspec.conformance.pool.driver import PoolConfig, PoolDriver  # noqa: E402
from kvspec.conformance.trace import Step  # noqa: E402
from kvspec.conformance.upstream.vllm_manager import (  # noqa: E402
    UNCHECKED_BAD_INPUT,
    VllmManager,
    vllm_manager_factory,
)
from kvspec.conformance.upstream.vllm_pool import VllmNotInstalledError, vllm_pool_factory  # noqa: E402
from kvspec.spec.hashing import LoRARequest  # noqa: E402
from kvspec.spec.request import Request  # noqa: E402

FACTORY_PATH = "kvspec.conformance.upstream.vllm_manager:vllm_manager_factory"


def run_request(m: ManagerTarget, rid: str, prompt: list[int]) -> list[int]:
    """Admit ``rid`` as a scheduler does: look up its prefix, allocate the rest, compute it."""
    hits, num_hit = m.get_computed_blocks(rid)
    new = m.allocate_slots(rid, len(prompt) - num_hit, num_hit, hits)
    assert new is not None
    m.set_num_computed_tokens(rid, len(prompt))
    return m.get_block_ids(rid)


# ------------------------------------------------------------------ the adapter


def test_factory_builds_a_manager_target_loadable_by_module_path() -> None:
    assert isinstance(vllm_manager_factory(6, 2), ManagerTarget)
    assert factory_level(vllm_manager_factory) == "manager"
    assert load_manager_factory(FACTORY_PATH) is vllm_manager_factory


@pytest.mark.parametrize("seed", [None, "0"])
def test_upstream_hashes_equal_the_specs_for_plain_lora_and_salted_requests(
    monkeypatch: pytest.MonkeyPatch, seed: str | None
) -> None:
    # Both take the root of every chain from PYTHONHASHSEED when it is set.
    if seed is None:
        monkeypatch.delenv("PYTHONHASHSEED", raising=False)
    else:
        monkeypatch.setenv("PYTHONHASHSEED", seed)
    m = vllm_manager_factory(8, 2)
    prompt = [1, 2, 3, 4, 5]
    cases = {"plain": (None, None), "lora": ("L1", None), "salt": (None, "s1"),
             "empty-salt": (None, "")}
    for rid, (lora, salt) in cases.items():
        m.add_request(rid, prompt, lora_name=lora, cache_salt=salt)
        spec = Request(rid, tuple(prompt), 2, lora=None if lora is None else LoRARequest(lora),
                       cache_salt=salt)
        assert m.request_block_hashes(rid) == list(spec.block_hashes), rid
    assert m.request_block_hashes("empty-salt") == m.request_block_hashes("plain")
    assert m.request_block_hashes("salt")[0] != m.request_block_hashes("plain")[0]


def test_pythonhashseed_chooses_upstreams_root_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYTHONHASHSEED", raising=False)
    unseeded = vllm_manager_factory(4, 2)
    unseeded.add_request("r", [1, 2])
    monkeypatch.setenv("PYTHONHASHSEED", "0")
    seeded = vllm_manager_factory(4, 2)
    seeded.add_request("r", [1, 2])
    assert seeded.request_block_hashes("r") != unseeded.request_block_hashes("r")


def test_a_finished_requests_full_blocks_are_hit_by_the_next_but_the_last_token() -> None:
    m = vllm_manager_factory(8, 2)
    m.add_request("a", [1, 2, 3, 4])
    table = run_request(m, "a", [1, 2, 3, 4])
    m.free("a")
    m.add_request("b", [1, 2, 3, 4])
    # Both blocks are cached, but the last token is recomputed: one block is a hit.
    assert m.get_computed_blocks("b") == ([table[0]], 2)


def test_statistics_count_admissions_not_lookups_and_readmissions_apart() -> None:
    m = vllm_manager_factory(8, 2)
    m.add_request("a", [1, 2, 3, 4, 5])
    run_request(m, "a", [1, 2, 3, 4, 5])
    m.add_request("b", [1, 2, 3, 4, 9])
    m.get_computed_blocks("b")  # looked up, never scheduled: not counted
    assert m.get_prefix_cache_stats() == (1, 5, 0, 0, 0, 0)
    m.preempt("a")
    run_request(m, "a", [1, 2, 3, 4, 5])  # readmitted: its own blocks are hits
    assert m.get_prefix_cache_stats() == (1, 5, 0, 1, 5, 4)


def test_the_scheduler_side_refuses_unknown_and_duplicate_requests() -> None:
    m = vllm_manager_factory(4, 2)
    with pytest.raises(UnknownRequestError, match="'ghost' was never added"):
        m.allocate_slots("ghost", 1)
    m.add_request("a", [1])
    with pytest.raises(ValueError, match="'a' already exists"):
        m.add_request("a", [2])
    with pytest.raises(ValueError, match=r"expected 0\.\.1"):
        m.set_num_computed_tokens("a", 2)


def test_only_the_current_profile_is_offered() -> None:
    with pytest.raises(ValueError, match="only the 'current' profile"):
        vllm_manager_factory(4, 2, profile="classic")


def test_a_missing_vllm_points_at_the_install_script(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` fail
    with pytest.raises(VllmNotInstalledError, match="scripts/install-vllm-target.sh"):
        vllm_manager_factory(4, 2)


# ------------------------------------------------------------------ conformance


def test_upstream_manager_passes_a_short_strict_check() -> None:
    result = run_check(
        vllm_manager_factory, target_name="vllm", level="manager", mode="strict",
        max_examples=40, seed=0, database=None, progress=False, bad_input=False,
    )
    assert result.passed, result.failure
    assert result.stats.rules["preempt"] > 0 and result.stats.rules["add_like"] > 0
    assert "eviction-order" in result.stats.invariant_checks


def test_upstream_refuses_zero_new_tokens_and_hits_into_a_cached_running_request() -> None:
    setup = [
        Step("add_request", {"request_id": "r0", "prompt_token_ids": [1, 2, 3, 4, 5]}),
        Step("get_computed_blocks", {"request_id": "r0"}),
        Step("allocate_slots", {"request_id": "r0", "num_new_tokens": 5}),
        Step("set_num_computed_tokens", {"request_id": "r0", "num_computed_tokens": 5}),
    ]
    zero = Step("allocate_slots", {"request_id": "r0", "num_new_tokens": 0})
    hits_into_running = Step("allocate_slots", {
        "request_id": "r0", "num_new_tokens": 1, "num_new_computed_tokens": 2,
        "new_computed_blocks": [1]})
    # The driver fails unless the target raises with every observation unchanged. The
    # second refusal is an ``assert`` of upstream's, on a request that has cached blocks.
    replay_steps(vllm_manager_factory, ManagerConfig(8, 2), [*setup, zero, hits_into_running])


def test_upstream_accepts_negative_counts_and_hit_lengths_without_blocks() -> None:
    unchecked = {"negative_new_tokens", "negative_lookahead", "hit_length_mismatch",
                 "hits_into_running_request"}
    assert unchecked == UNCHECKED_BAD_INPUT
    m = vllm_manager_factory(8, 2)
    m.add_request("r0", [1, 2, 3, 4, 5])
    run_request(m, "r0", [1, 2, 3, 4, 5])
    assert m.allocate_slots("r0", -1) == []
    assert m.allocate_slots("r0", 1, num_lookahead_tokens=-1) == []
    m.add_request("r1", [7, 8, 9])
    # Two tokens claimed as prefix hits with no hit block: admitted, hits counted.
    assert m.allocate_slots("r1", 1, 2, []) == [4, 5]
    assert m.get_prefix_cache_stats()[:3] == (2, 8, 2)


def test_upstream_queues_a_block_listed_twice_in_one_free_once_at_its_last_listing() -> None:
    # Pool level: two requests share block 1 and finish in one call (the free_two rule).
    for hashed, queue in ((False, [2, 3, 1, 4, 5]), (True, [2, 3, 4, 5, 1])):
        driver = PoolDriver(vllm_pool_factory, PoolConfig(6))
        steps = [Step("get_new_blocks", {"num_blocks": 2})]
        if hashed:
            steps.append(Step("cache_block", {"block_id": 1, "block_hash": b"p"}))
        steps += [Step("touch", {"block_ids": [1]}), Step("get_new_blocks", {"num_blocks": 1}),
                  Step("free_blocks", {"block_ids": [2, 1, 3, 1]})]
        for step in steps:
            driver.apply(step)  # strict: the spec agrees at every step
        assert driver.target.free_block_ids() == queue
        assert driver.target.get_num_free_blocks() == len(queue)


def test_hits_into_a_running_request_with_caching_off_and_a_full_pool_return_none() -> None:
    m = vllm_manager_factory(3, 2, enable_caching=False)
    m.add_request("r0", [30, 30, 30, 30])
    run_request(m, "r0", [30, 30, 30, 30])
    m.append_output_tokens("r0", [5])
    # The spec refuses this (hits with caching off, into a running request); upstream's
    # capacity check answers first.
    assert m.allocate_slots("r0", 1, 2, [1]) is None
    assert m.get_block_ids("r0") == [1, 2]


def test_adapter_repr_names_upstream_and_its_size() -> None:
    m = vllm_manager_factory(5, 4, enable_caching=False)
    assert isinstance(m, VllmManager)
    assert repr(m) == ("VllmManager(vllm 0.33.0 KVCacheManager, num_blocks=5, block_size=4, "
                       "enable_caching=False)")
