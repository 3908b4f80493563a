"""Every word kvspec prints is literally true: a spec bug is reported as the spec's, a
sequence outside an invariant's discipline is not a false alarm, both sides are shown after
the same step, and the situations the random phase claims to reach are reached."""

from __future__ import annotations

import ast
import fcntl
import os
import pathlib
import pickle

import pytest
from kvspec.conformance.engines.pipeline import run_check
from kvspec.conformance.engines.replay import replay_trace
from kvspec.conformance.manager.targets import impl_manager_factory
from kvspec.conformance.outcome import Divergence
from kvspec.conformance.pool.driver import PoolConfig, replay_steps
from kvspec.conformance.pool.targets import ImplPool, impl_pool_factory
from kvspec.conformance.report import format_failure
from kvspec.conformance.trace import Step, Trace
from kvspec.spec import pool as spec_pool

QUICK = {"database": None, "progress": False, "seed": 0}


def test_a_broken_spec_is_reported_as_a_spec_error_not_blamed_on_the_target(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_touch = spec_pool.touch

    def touch_forgets_the_queue(s, block_ids):  # type: ignore[no-untyped-def]
        queue = list(s.free_queue)
        real_touch(s, block_ids)
        s.free_queue[:] = queue  # the spec bug: a revived block stays queued

    monkeypatch.setattr(spec_pool, "touch", touch_forgets_the_queue)
    result = run_check(impl_pool_factory, level="pool", settings_name="dev", **QUICK)
    failure = result.failure
    assert failure is not None and failure.spec_error
    assert failure.caught_by == "spec:free-iff-unreferenced"
    report = format_failure(failure)
    assert report.startswith("SPEC ERROR") and "not in the target" in report


def test_the_copy_on_write_trace_that_raised_a_false_alarm_now_passes() -> None:
    """A fork in the middle of a table leaves the discipline eviction-order assumes: that
    invariant is waived from there on, everything else is still judged, and the target,
    which is correct, agrees."""
    steps = [
        Step("get_new_blocks", {"num_blocks": 2}),
        Step("touch", {"block_ids": [1, 2]}),
        Step("cache_block", {"block_id": 1, "block_hash": b"a"}),
        Step("cache_block", {"block_id": 2, "block_hash": b"a.a", "parent": b"a"}),
        Step("fork_block", {"block_id": 1}),
        Step("free_blocks", {"block_ids": [2, 1]}),
        Step("free_blocks", {"block_ids": [2, 3]}),
    ]
    trace = Trace("pool", PoolConfig(4).to_json(), steps)
    result = replay_trace(trace, "impl")
    assert result.ok, result.message
    assert set(result.waived) == {"eviction-order"} and "step 7" in result.waived["eviction-order"]
    # ...and the same invariant still catches a pool that breaks it within the discipline
    forward = replay_trace(Trace("pool", PoolConfig(4).to_json(), steps[:4] + [
        Step("free_blocks", {"block_ids": [2, 1]}), Step("free_blocks", {"block_ids": [2, 1]})
    ]), "mutant:forward-free")
    assert not forward.ok


class HandsOutInAnotherOrder(ImplPool):
    """Right state, wrong return value: the ids come back reversed."""

    def get_new_blocks(self, num_blocks: int) -> list[int]:
        return list(reversed(super().get_new_blocks(num_blocks)))


def test_a_return_value_divergence_shows_both_sides_after_the_same_step() -> None:
    with pytest.raises(Divergence) as info:
        replay_steps(HandsOutInAnotherOrder, PoolConfig(4),
                     [Step("get_new_blocks", {"num_blocks": 2})])
    failure = info.value
    assert failure.caught_by == "handed-out-ids"
    # both views are after the step: blocks 1 and 2 are held on both sides
    assert failure.spec_view["ref_cnt"] == failure.target_view["ref_cnt"] == [0, 1, 1, 0]
    assert failure.spec_view["free_queue"] == failure.target_view["free_queue"] == [3]


@pytest.fixture(scope="module", params=[("pool", impl_pool_factory),
                                        ("manager", impl_manager_factory)],
                ids=["pool", "manager"])
def ci_run(request: pytest.FixtureRequest,  # type: ignore[no-untyped-def]
           tmp_path_factory: pytest.TempPathFactory):
    """One random run per level under the ci profile, shared by the coverage tests, and by
    pytest-xdist workers: the first to need it runs it (seed 0, so every run is the same),
    the others read its result."""
    level, factory = request.param
    # This session's folder, the same for every worker (a worker's own is one level down).
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent
    path = shared / f"ci-run-{level}.pickle"
    with open(shared / f"ci-run-{level}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.exists():
            return pickle.loads(path.read_bytes())
        result = run_check(factory, level=level, settings_name="ci", exhaustive=False,
                           **QUICK)
        assert result.passed, result.failure
        path.write_bytes(pickle.dumps(result))
        return result


def test_every_named_situation_is_reached_under_the_ci_profile(ci_run) -> None:
    missing = [s for s in ci_run.situations if not ci_run.stats.situations[s]]
    assert not missing, f"not reached under ci: {missing}"


def test_no_move_takes_most_of_a_run(ci_run) -> None:
    total = sum(ci_run.stats.rules.values())
    top, count = ci_run.stats.rules.most_common(1)[0]
    assert count < total / 4, f"{top} took {count} of {total} steps"


def test_conformance_has_no_import_cycles() -> None:
    """Levels and engines import downward only, so each is one module to add or read."""
    root = pathlib.Path(__file__).resolve().parent.parent / "conformance"
    sources = {
        ("kvspec.conformance." + ".".join(p.relative_to(root).with_suffix("").parts))
        .removesuffix(".__init__"): p
        for p in root.rglob("*.py")
    }
    graph: dict[str, set[str]] = {}
    for module, path in sources.items():
        deps: set[str] = set()
        for node in ast.parse(path.read_text()).body:  # module level: what loads with it
            if isinstance(node, ast.ImportFrom) and node.module:
                for alias in node.names:  # ``from package import submodule``
                    sub = f"{node.module}.{alias.name}"
                    deps.add(sub if sub in sources else node.module)
        graph[module] = {d for d in deps if d in sources}

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            raise AssertionError("import cycle: " + " -> ".join([*path, module]))
        for dep in graph.get(module, ()):
            visit(dep, [*path, module])

    for module in graph:
        visit(module, [])


def test_classic_keys_a_lora_named_like_a_salt_alike_and_hit_content_says_it_assumes_not() -> None:
    """vLLM 0.22.x keys extra keys untagged: an adapter named ``x`` hits a tenant salted
    ``x``. The spec mirrors it, so in ``classic`` hit-content is waived when it happens
    (not a false alarm); in ``current`` the keys differ and nothing is hit."""
    steps = [
        Step("add_request", {"request_id": "r0", "prompt_token_ids": [1, 2, 3, 4],
                             "cache_salt": "x"}),
        Step("get_computed_blocks", {"request_id": "r0"}),
        Step("allocate_slots", {"request_id": "r0", "num_new_tokens": 4}),
        Step("add_request", {"request_id": "r1", "prompt_token_ids": [1, 2, 3, 4, 5],
                             "lora_name": "x"}),
        Step("get_computed_blocks", {"request_id": "r1"}),
    ]
    config = {"num_blocks": 4, "block_size": 2}
    classic = replay_trace(Trace("manager", {**config, "profile": "classic"}, steps), "impl")
    assert classic.ok and set(classic.waived) == {"hit-content"}
    current = replay_trace(Trace("manager", {**config, "profile": "current"}, steps), "impl")
    assert current.ok and not current.waived


def test_a_spec_bug_in_a_lookup_is_reported_though_lookups_leave_the_state_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The drivers skip the spec's invariants on a snapshot equal to one that held them;
    a lookup that (by a spec bug) changes the state gives another snapshot, and is judged."""
    from kvspec.conformance.manager.driver import ManagerConfig
    from kvspec.conformance.manager.driver import replay_steps as replay_manager
    from kvspec.spec import manager as spec_manager

    real_lookup, real_computed = spec_pool.get_cached_block, spec_manager.get_computed_blocks

    def lookup_takes_a_reference(s, block_hash):  # type: ignore[no-untyped-def]
        s.ref_cnt[1] += 1  # the spec bug: block 1 referenced, still queued
        return real_lookup(s, block_hash)

    def computed_takes_a_reference(m, request):  # type: ignore[no-untyped-def]
        m.pool.ref_cnt[1] += 1
        return real_computed(m, request)

    monkeypatch.setattr(spec_pool, "get_cached_block", lookup_takes_a_reference)
    monkeypatch.setattr(spec_manager, "get_computed_blocks", computed_takes_a_reference)
    lookup = Step("get_cached_block", {"block_hash": b"a"})
    with pytest.raises(Divergence) as pool_failure:
        replay_steps(impl_pool_factory, PoolConfig(4), [lookup, lookup])
    assert pool_failure.value.spec_error and len(pool_failure.value.steps) == 1
    assert pool_failure.value.caught_by.startswith("spec:")
    steps = [Step("add_request", {"request_id": "a", "prompt_token_ids": [1, 2, 3]}),
             Step("get_computed_blocks", {"request_id": "a"})]
    with pytest.raises(Divergence) as manager_failure:
        replay_manager(impl_manager_factory, ManagerConfig(4, 2), steps)
    assert manager_failure.value.spec_error and len(manager_failure.value.steps) == 2
    assert manager_failure.value.caught_by.startswith("spec:")


def test_a_spec_bug_that_breaks_only_a_manager_invariant_in_a_lookup_is_reported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The manager driver skips the spec's manager invariants when nothing their snapshot
    is built from changed; statistics changed by a lookup (a spec bug that leaves the pool
    alone) are a change, and are judged."""
    from kvspec.conformance.manager.driver import ManagerConfig
    from kvspec.conformance.manager.driver import replay_steps as replay_manager
    from kvspec.spec import manager as spec_manager

    real_computed = spec_manager.get_computed_blocks

    def computed_counts_a_request(m, request):  # type: ignore[no-untyped-def]
        m.stats.requests += 1  # the spec bug: a lookup counted as an admission
        return real_computed(m, request)

    monkeypatch.setattr(spec_manager, "get_computed_blocks", computed_counts_a_request)
    steps = [Step("add_request", {"request_id": "a", "prompt_token_ids": [1, 2, 3]}),
             Step("get_computed_blocks", {"request_id": "a"})]
    with pytest.raises(Divergence) as failure:
        replay_manager(impl_manager_factory, ManagerConfig(4, 2), steps)
    assert failure.value.spec_error and len(failure.value.steps) == 2
    assert failure.value.caught_by == "spec:stats-match-hits"
