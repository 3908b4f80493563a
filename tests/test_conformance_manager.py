"""The request-level conformance engine, used the way a user uses it."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kvspec.conformance.commands.check import levels_to_run
from kvspec.conformance.engines.pipeline import run_check
from kvspec.conformance.engines.replay import replay_trace
from kvspec.conformance.manager.driver import (
    Divergence,
    ManagerConfig,
    ManagerDriver,
    replay_steps,
)
from kvspec.conformance.manager.targets import (
    factory_level,
    impl_manager_factory,
    load_manager_factory,
    manager_factory_for,
)
from kvspec.conformance.mutants import MUTANTS
from kvspec.conformance.mutants.manager import HashIgnoresParent, NewBlocksBeforeTouch
from kvspec.conformance.outcome import OutsideScope
from kvspec.conformance.pool.targets import TargetSpecError, impl_pool_factory
from kvspec.conformance.report import write_failure
from kvspec.conformance.trace import Step, Trace

# One CPU second of exhaustive search (dev gives it three): these tests size the random phase.
QUICK = {"level": "manager", "max_examples": 60, "database": None, "progress": False,
         "seed": 7, "exhaustive_seconds": 1.0}
MANAGER_MUTANTS = [n for n, m in MUTANTS.items() if m.level == "manager"]


def admit(rid: str, num_new_tokens: int, hits: list[int] | None = None,
          block_size: int = 2) -> list[Step]:
    """The steps a scheduler takes to admit a request with ``hits`` already looked up."""
    hits = hits or []
    return [
        Step("get_computed_blocks", {"request_id": rid}),
        Step("allocate_slots", {"request_id": rid, "num_new_tokens": num_new_tokens,
                                "num_new_computed_tokens": len(hits) * block_size,
                                "new_computed_blocks": hits}),
        Step("set_num_computed_tokens", {"request_id": rid,
                                         "num_computed_tokens": len(hits) * block_size
                                         + num_new_tokens}),
    ]


@pytest.mark.parametrize("profile", ["current", "classic"])
def test_impl_manager_conforms_to_the_spec(profile: str) -> None:
    result = run_check(impl_manager_factory, profile=profile, **QUICK)
    assert result.passed, result.failure
    assert result.stats.steps > 1000
    assert {"hit-content", "stats-match-hits", "eviction-order"} <= set(
        result.stats.invariant_checks)
    assert result.stats.rules["preempt"] > 0 and result.stats.rules["add_like"] > 0


def test_a_hit_on_a_block_popped_as_new_is_reported_as_a_double_allocation() -> None:
    """Two finished requests leave their blocks cached; a filler takes all free blocks but
    two, so the older request's head block (a zero-ref hit) stands at the queue front."""
    bad = manager_factory_for(NewBlocksBeforeTouch)
    steps = [
        Step("add_request", {"request_id": "a", "prompt_token_ids": [1, 2, 3]}),
        *admit("a", 3),
        Step("free", {"request_id": "a"}),
        Step("add_request", {"request_id": "b", "prompt_token_ids": [7, 8, 9]}),
        *admit("b", 3),
        Step("free", {"request_id": "b"}),
        Step("add_request", {"request_id": "f", "prompt_token_ids": [30, 30, 30, 30]}),
        *admit("f", 4),
        Step("add_request", {"request_id": "c", "prompt_token_ids": [1, 2, 5, 6]}),
        *admit("c", 2, hits=[1]),
    ]
    config = ManagerConfig(num_blocks=5, block_size=2)
    driver = replay_steps(impl_manager_factory, config, steps)
    assert driver.target.free_block_ids() == []
    assert driver.target.get_block_ids("c") == [1, 2]  # the hit, then b's head, evicted
    with pytest.raises(Divergence) as info:
        replay_steps(bad, config, steps)
    assert info.value.caught_by == "no-double-allocation"


class _OverAllocating:
    """kvspec's manager, but every ``allocate_slots`` reserves two lookahead slots more
    than asked, so it hands out blocks the spec does not."""

    def __init__(self, inner: object) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def allocate_slots(self, request_id: str, num_new_tokens: int,
                       num_new_computed_tokens: int = 0, new_computed_blocks: tuple = (),
                       num_lookahead_tokens: int = 0) -> list[int] | None:
        return self.inner.allocate_slots(request_id, num_new_tokens, num_new_computed_tokens,
                                         new_computed_blocks, num_lookahead_tokens + 2)


def over_allocating_factory(num_blocks: int, block_size: int, *, enable_caching: bool = True,
                            profile: str = "current") -> _OverAllocating:
    return _OverAllocating(impl_manager_factory(num_blocks, block_size,
                                                enable_caching=enable_caching,
                                                profile=profile))


def test_blocks_the_target_hands_out_beyond_the_specs_are_blamed_on_the_target() -> None:
    """The spec is judged on the blocks *it* handed out: a target returning more is a
    target failure, never a spec error."""
    steps = [
        Step("add_request", {"request_id": "a", "prompt_token_ids": [1, 2, 3]}),
        *admit("a", 3),
    ]
    config = ManagerConfig(num_blocks=5, block_size=2)
    with pytest.raises(Divergence) as info:
        replay_steps(over_allocating_factory, config, steps)
    assert not info.value.caught_by.startswith("spec:"), info.value.message
    assert info.value.caught_by == "allocate-result"


class _CachesPartialBlock:
    """kvspec's manager, but ``allocate_slots`` also caches a trailing partial block it
    handed out, under a made-up key."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def allocate_slots(self, request_id: str, *args: Any) -> list[int] | None:
        new = self.inner.allocate_slots(request_id, *args)
        pool = self.inner.manager.block_pool
        for b in new or []:
            if pool.get_block(b).block_hash is None:
                pool.cache_block(pool.get_block(b), b"partial")
        return new


def test_a_cached_partial_block_is_named_as_such_in_the_report() -> None:
    def factory(num_blocks: int, block_size: int, *, enable_caching: bool = True,
                profile: str = "current") -> _CachesPartialBlock:
        return _CachesPartialBlock(impl_manager_factory(
            num_blocks, block_size, enable_caching=enable_caching, profile=profile))

    steps = [Step("add_request", {"request_id": "a", "prompt_token_ids": [1]}), *admit("a", 1)]
    with pytest.raises(Divergence) as info:
        replay_steps(factory, ManagerConfig(num_blocks=3, block_size=2), steps)
    assert info.value.caught_by == "no-double-allocation"
    assert ("block 1 is block 0 of request 'a' (tokens 0..1), which has 0 full blocks: a "
            "block that is not full was cached") in info.value.message


def test_a_hash_that_ignores_the_parent_is_caught_by_content_when_bytes_are_not_compared(
) -> None:
    """With ``compare_hashes=False`` (a target hashing its own way) the harness's record of
    what each block holds still exposes a key shared by two different prefixes."""
    steps = [
        Step("add_request", {"request_id": "a", "prompt_token_ids": [1, 2, 3, 4, 5]}),
        *admit("a", 5),
        # b's first block holds a's second block's tokens, after another prefix
        Step("add_request", {"request_id": "b", "prompt_token_ids": [3, 4, 5]}),
        Step("get_computed_blocks", {"request_id": "b"}),
    ]
    config = ManagerConfig(num_blocks=8, block_size=2, compare_hashes=False)
    assert replay_steps(impl_manager_factory, config, steps).target.get_computed_blocks(
        "b") == ([], 0)
    with pytest.raises(Divergence) as info:
        replay_steps(manager_factory_for(HashIgnoresParent), config, steps)
    assert info.value.caught_by == "hit-content"
    assert "expected 2 tokens ending (3, 4)" in info.value.message


def test_refusals_must_change_nothing_and_unknown_requests_are_refused() -> None:
    driver = ManagerDriver(impl_manager_factory, ManagerConfig(num_blocks=4, block_size=2))
    driver.check()
    out = driver.apply(Step("allocate_slots", {"request_id": "ghost", "num_new_tokens": 1}))
    assert out.refused is not None and out.refused.reason == "unknown-request"
    driver.apply(Step("add_request", {"request_id": "a", "prompt_token_ids": [1, 2, 3]}))
    out = driver.apply(Step("allocate_slots", {"request_id": "a", "num_new_tokens": 0}))
    assert out.refused is not None and out.refused.reason == "zero-new-tokens"
    driver.apply(Step("get_computed_blocks", {"request_id": "a"}))
    out = driver.apply(Step("allocate_slots", {"request_id": "a", "num_new_tokens": 9}))
    assert out.refused is None and out.result is None  # cannot schedule: 5 blocks > 3 free


def test_steps_a_scheduler_never_takes_are_out_of_scope_not_divergences() -> None:
    """The manager protocol's trusted inputs: a request is admitted right after its lookup,
    only requests without blocks are looked up, and computed tokens stay within the slots
    allocated. A sequence that breaks one is not judged (the minimizer discards it)."""
    add = Step("add_request", {"request_id": "a", "prompt_token_ids": [1, 2, 3]})
    look = Step("get_computed_blocks", {"request_id": "a"})
    admit = Step("allocate_slots", {"request_id": "a", "num_new_tokens": 2})
    config = ManagerConfig(num_blocks=4, block_size=2)
    with pytest.raises(OutsideScope, match="without looking it up"):
        replay_steps(impl_manager_factory, config, [add, admit])
    with pytest.raises(OutsideScope, match="holds blocks"):
        replay_steps(impl_manager_factory, config, [add, look, admit, look])
    computed = Step("set_num_computed_tokens", {"request_id": "a", "num_computed_tokens": 3})
    with pytest.raises(OutsideScope, match="slots for 2 tokens"):
        replay_steps(impl_manager_factory, config, [add, look, admit, computed])
    replay_steps(impl_manager_factory, config, [add, look, admit])  # in scope, and agrees


def test_a_failing_manager_run_writes_a_trace_that_replays_to_the_same_failure(
    tmp_path,
) -> None:
    mutant = MUTANTS["stats-every-attempt"]
    result = run_check(mutant.factory, target_name="mutant", level="manager",
                       settings_name="ci", database=None, progress=False, seed=0)
    assert result.failure is not None
    # Written as for a user's own target "impl": once fixed, the pasted test passes.
    trace_path, test_path = write_failure(result.failure, "impl", tmp_path)

    trace = Trace.load(trace_path)
    assert json.loads(trace_path.read_text())["level"] == "manager"
    on_mutant = replay_trace(trace, mutant.factory)
    assert not on_mutant.ok and on_mutant.divergence is not None
    assert on_mutant.divergence.caught_by == result.failure.caught_by
    assert replay_trace(trace, "impl").ok
    namespace: dict = {}
    exec(compile(test_path.read_text(), "regression", "exec"), namespace)
    namespace["test_kvspec_regression"]()  # impl agrees with the spec on the trace


def test_check_all_runs_both_levels_for_impl_and_one_for_a_users_factory() -> None:
    assert levels_to_run("impl", "all") == (["pool", "manager"], [])
    assert levels_to_run(
        "kvspec.conformance.pool.targets:impl_pool_factory", "all") == (["pool"], [])
    assert levels_to_run("kvspec.conformance.manager.targets:impl_manager_factory", "all") == (
        ["manager"], [])
    assert factory_level(impl_pool_factory) == "pool"
    assert factory_level(lambda num_blocks, block_size, **kw: None) == "manager"
    with pytest.raises(TargetSpecError, match="builds pool targets"):
        load_manager_factory("kvspec.conformance.pool.targets:impl_pool_factory")


def test_a_target_that_trusts_its_scheduler_names_the_bad_input_it_does_not_refuse() -> None:
    def trusting(num_blocks: int, block_size: int, **kwargs):  # noqa: ANN003, ANN202
        return impl_manager_factory(num_blocks, block_size, **kwargs)

    trusting.unsupported_bad_input = {"negative_new_tokens"}  # type: ignore[attr-defined]
    result = run_check(trusting, **QUICK)
    assert result.passed, result.failure
    assert result.unsupported == {"bad:negative_new_tokens"}
    assert "bad:negative_new_tokens" not in result.stats.rules
    assert result.stats.rules["bad:zero_new_tokens"] > 0

    trusting.unsupported_bad_input = {"negative_new_tokenz"}  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="not bad-input kinds"):
        run_check(trusting, **QUICK)
