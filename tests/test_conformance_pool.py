"""The pool-level conformance engine, used the way a user uses it."""

from __future__ import annotations

import json

import pytest
import third_party_pool
from kvspec.conformance.commands.check import how_minimal
from kvspec.conformance.engines.pipeline import run_check
from kvspec.conformance.engines.replay import replay_trace
from kvspec.conformance.mutants import MUTANTS
from kvspec.conformance.pool.driver import Divergence, PoolConfig, PoolDriver, replay_steps
from kvspec.conformance.pool.targets import impl_pool_factory
from kvspec.conformance.report import pytest_function, write_failure
from kvspec.conformance.trace import Step, Trace, TraceError

# One CPU second of exhaustive search (dev gives it three): these tests size the random
# phase (the mutant zoo's tests hold the exhaustive engine to its shortest failures).
QUICK = {"max_examples": 60, "database": None, "progress": False, "seed": 7,
         "exhaustive_seconds": 1.0}


@pytest.mark.parametrize("profile", ["current", "classic"])
@pytest.mark.parametrize("mode", ["strict", "abstract"])
def test_impl_conforms_to_the_spec(profile: str, mode: str) -> None:
    result = run_check(impl_pool_factory, profile=profile, mode=mode, **QUICK)
    assert result.passed, result.failure
    assert result.stats.steps > 500
    assert set(result.stats.invariant_checks) >= {"eviction-order", "no-double-allocation"}


def test_a_different_but_correct_allocator_passes_abstract_mode() -> None:
    result = run_check(third_party_pool.factory, target_name="highest-id", mode="abstract",
                       **QUICK)
    assert result.passed, result.failure


def test_a_different_allocator_fails_strict_mode_with_a_clear_first_divergence() -> None:
    result = run_check(third_party_pool.factory, target_name="highest-id", mode="strict",
                       **QUICK)
    assert result.failure is not None
    # The fresh pool's queue order already differs: the spec evicts low ids first.
    assert result.failure.caught_by == "free_queue"
    assert "spec (1, 2" in result.failure.message


def test_a_failing_run_writes_a_trace_that_replays_to_the_same_failure(tmp_path) -> None:
    mutant = MUTANTS["touch-leaves-in-queue"]
    result = run_check(mutant.factory, target_name="mutant", settings_name="ci",
                       database=None, progress=False, seed=0)
    assert result.failure is not None
    trace_path, test_path = write_failure(result.failure, "mutant", tmp_path)

    trace = Trace.load(trace_path)
    assert json.loads(trace_path.read_text())["format"] == "kvspec-trace"
    on_mutant = replay_trace(trace, mutant.factory)
    assert not on_mutant.ok
    assert on_mutant.divergence is not None
    assert on_mutant.divergence.caught_by == result.failure.caught_by
    assert replay_trace(trace, "impl").ok
    assert "def test_kvspec_regression" in test_path.read_text()


def test_the_pasted_pytest_function_runs(tmp_path) -> None:
    failure = Divergence("x", "m", "pool", PoolConfig(4),
                         [Step("get_new_blocks", {"num_blocks": 1})])
    namespace: dict = {}
    exec(compile(pytest_function(failure, "impl"), "regression", "exec"), namespace)
    namespace["test_kvspec_regression"]()  # impl agrees with the spec on this trace


def test_a_refused_operation_must_change_nothing() -> None:
    mutant = MUTANTS["over-allocation-mutates"]
    with pytest.raises(Divergence) as info:
        replay_steps(mutant.factory, PoolConfig(4), [Step("get_new_blocks", {"num_blocks": 9})])
    assert info.value.caught_by == "refusal-changes-nothing"


def test_a_target_that_accepts_a_double_free_is_caught() -> None:
    steps = [Step("get_new_blocks", {"num_blocks": 1}), Step("free_blocks", {"block_ids": [1]}),
             Step("free_blocks", {"block_ids": [1]})]
    mutant = MUTANTS["free-of-ref0-goes-negative"]
    with pytest.raises(Divergence) as info:
        replay_steps(mutant.factory, PoolConfig(4), steps)
    assert info.value.caught_by == "refuses-bad-input"
    assert info.value.step_index == 3


def test_driver_checks_every_step_and_keeps_the_trace() -> None:
    driver = PoolDriver(impl_pool_factory, PoolConfig(4))
    driver.apply(Step("get_new_blocks", {"num_blocks": 2}))
    driver.apply(Step("cache_block", {"block_id": 1, "block_hash": b"a", "parent": None}))
    out = driver.apply(Step("get_cached_block", {"block_hash": b"a"}))
    assert out.result == 1
    assert [s.op for s in driver.steps] == ["get_new_blocks", "cache_block", "get_cached_block"]


def test_trace_files_are_versioned() -> None:
    data = Trace("pool", {"num_blocks": 2}, []).to_json()
    with pytest.raises(TraceError, match="version"):
        Trace.from_json({**data, "version": 99})
    with pytest.raises(TraceError, match="unknown operation"):
        Trace.from_json({**data, "steps": [{"op": "explode", "args": {}}]})


def test_a_failure_of_the_fresh_state_is_reported_as_one_not_as_depth_1() -> None:
    """A target wrong before any step fails with an empty sequence: the exhaustive engine
    says so, and that sequence is the shortest there is."""
    result = run_check(MUTANTS["usage-counts-null"].factory, **QUICK)
    assert result.failure is not None and result.failure.steps == []
    assert result.found_by == "exhaustive"
    assert "a failure in the fresh state, before any step" in result.exhaustive.describe()
    assert how_minimal(result) == "1-minimal, shortest in the exhaustive search"
