"""The content-level conformance engine: a scheduler played over a pool and a block store,
with every byte checked. Used the way a user uses it: run the machine, read the failure,
replay the trace, compare stores across devices."""

from __future__ import annotations

import pytest
import third_party_pool
import torch
from kvspec.conformance.content.driver import (
    ContentConfig,
    ContentDriver,
    Divergence,
    assert_same_gathers,
    replay_actions,
    replay_content_trace,
    store_cls_for,
)
from kvspec.conformance.content.values import ExpectedKV, bits
from kvspec.conformance.engines.pipeline import run_check
from kvspec.conformance.mutants import store as store_mutants
from kvspec.conformance.mutants.store_zoo import STORE_MUTANTS, ensure_registered
from kvspec.conformance.pool.targets import impl_factory_for, impl_pool_factory
from kvspec.conformance.trace import Step, Trace
from kvspec.impl.block_pool import BlockPool
from kvspec.impl.block_store import BlockStore, CopyOnWriteError
from test_block_store import TOLERANCE, dense_attention

QUICK = {"max_examples": 50, "database": None, "progress": False, "seed": 7}
STORE_MUTANT_NAMES = [m.name for m in STORE_MUTANTS]


def admit(prompt: list[int]) -> Step:
    return Step("admit", {"prompt": prompt})


def decode(request: int, token: int) -> Step:
    return Step("decode", {"request": request, "token": token})


def fork(request: int) -> Step:
    return Step("fork", {"request": request})


def free(request: int) -> Step:
    return Step("free", {"request": request})


def failure_of(steps: list[Step], store_cls: type[BlockStore], num_blocks: int = 8,
               **kwargs: object) -> Divergence:
    with pytest.raises(Divergence) as caught:
        replay_actions(impl_pool_factory, ContentConfig(num_blocks), steps, store_cls=store_cls,
                       **kwargs)
    return caught.value


# ------------------------------------------------------------------------- impl passes


@pytest.mark.parametrize("profile", ["current", "classic"])
def test_impl_pool_and_block_store_pass_the_content_machine(profile: str) -> None:
    result = run_check(impl_pool_factory, level="content", profile=profile, **QUICK)
    assert result.passed, result.failure
    assert result.level == "content" and result.stats.steps > 500
    checks = set(result.stats.invariant_checks)
    # the pool's own invariants run too: the content level is a superset of the pool level
    assert checks >= {"gather-matches-tokens", "cached-block-content",
                      "writes-stay-in-their-slots", "eviction-order", "no-double-allocation"}
    assert {"admit", "decode", "fork", "sample_two", "free", "readmit"} <= set(
        result.stats.rules
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_the_content_machine_is_bit_exact_in_half_precision(dtype: torch.dtype) -> None:
    result = run_check(impl_pool_factory, level="content", dtype=dtype,
                       **{**QUICK, "max_examples": 15})
    assert result.passed, result.failure


def test_any_correct_allocator_can_be_driven_in_abstract_mode() -> None:
    result = run_check(third_party_pool.factory, level="content", target_name="highest-id",
                       mode="abstract", **{**QUICK, "max_examples": 25})
    assert result.passed, result.failure


def test_a_pool_without_fork_block_gets_copy_on_write_from_allocate_and_free() -> None:
    no_fork = impl_factory_for(BlockPool, unsupported=frozenset({"fork_block"}))
    result = run_check(no_fork, level="content", target_name="no-fork",
                       **{**QUICK, "max_examples": 25})
    assert result.passed, result.failure
    assert result.unsupported == frozenset({"fork_block"})


def test_an_unavailable_device_is_refused_before_anything_runs() -> None:
    with pytest.raises(ValueError, match="device 'nosuchdevice' is not available"):
        run_check(impl_pool_factory, level="content", device="nosuchdevice", **QUICK)


# ---------------------------------------------------------------------- store mutants


@pytest.mark.parametrize("name", STORE_MUTANT_NAMES)
def test_store_mutants_are_invisible_to_the_pool_level_machine(name: str) -> None:
    # The same target, checked by ids only: every id, count, hash and queue is right.
    mutant = ensure_registered()[name]
    result = run_check(mutant.factory, target_name=f"mutant:{name}",
                       **{**QUICK, "max_examples": 30})
    assert result.passed, result.failure


def test_the_zoo_lists_each_store_mutant_by_the_first_line_of_its_docstring() -> None:
    for mutant in ensure_registered().values():
        cls = store_cls_for(mutant.factory)
        assert cls.__module__ == store_mutants.__name__ and issubclass(cls, BlockStore)
        assert mutant.level == "content"
        assert mutant.summary == (cls.__doc__ or "").strip().splitlines()[0]


def test_a_fork_without_the_copy_shows_in_the_childs_first_token() -> None:
    failure = failure_of([admit([0]), fork(0), decode(1, 1)],
                         store_mutants.ForkSharesInsteadOfCopying)
    assert failure.caught_by == "gather-matches-tokens"
    assert "request 1" in failure.message and "position 0" in failure.message
    assert [s.op for s in failure.detail][-4:] == [
        "fork_block", "copy_blocks", "write", "cache_block"]


def test_a_copy_in_the_wrong_direction_changes_the_block_it_should_only_read() -> None:
    failure = failure_of([admit([0]), fork(0), decode(1, 1)], store_mutants.CopyWrongDirection)
    assert failure.caught_by == "writes-stay-in-their-slots"
    assert "copy_blocks(src_ids=[1], dst_ids=[2]) changed block 1 offset 0" in failure.message


def test_a_copy_of_k_only_leaves_the_childs_values_stale() -> None:
    failure = failure_of([admit([0]), fork(0), decode(1, 1)], store_mutants.CopyOnlyKeys)
    assert failure.caught_by == "gather-matches-tokens"
    assert ": V of position 0" in failure.message


def test_a_padded_write_overwrites_a_cached_block_and_the_next_hit_serves_it() -> None:
    # Block 8 (the pool's last) ends up cached under "1.0" and free, behind other free
    # blocks; then a 5-token prompt that hits one block computes 3 tokens, which the mutant
    # pads to 4 with slot -1: the padding lands in block 8.
    story = [
        admit([0, 0, 0, 0]),        # request 0: blocks 1, 2
        admit([1, 1, 1, 1]),        # request 1: blocks 3, 4
        admit([0, 1, 0, 1]),        # request 2: blocks 5, 6
        admit([0]),                 # request 3: block 7
        admit([1, 0]),              # request 4: block 8, cached under "1.0"
        free(2),                    # blocks 6, 5 queue first ...
        free(4),                    # ... and block 8, still cached, behind them
        admit([0, 0, 1, 1, 1]),     # request 5: hits "0.0", takes 6, 5, writes 3 tokens
        free(3),                    # block 7 free for the next request
        admit([1, 0, 1]),           # request 6: hits "1.0", which is block 8
    ]
    replay_actions(impl_pool_factory, ContentConfig(9), story)  # a correct store is fine

    pad = store_mutants.PaddedWriteWrapsPadSlot
    first = failure_of(story, pad, 9)
    assert first.caught_by == "writes-stay-in-their-slots" and first.step_index == 8
    assert "changed block 8 offset 1" in first.message and "hash b'1.0'" in first.message

    cached = failure_of(story, pad, 9, skip=frozenset({"writes-stay-in-their-slots"}))
    assert cached.caught_by == "cached-block-content" and cached.step_index == 8
    assert "block 8 is cached under b'1.0'" in cached.message

    hit = failure_of(story, pad, 9, skip=frozenset({"writes-stay-in-their-slots",
                                                    "cached-block-content"}))
    assert hit.caught_by == "gather-matches-tokens" and hit.step_index == 10
    assert "request 6" in hit.message and "position 1 (block 8 offset 1" in hit.message


# --------------------------------------------------------------------- other failures


def test_a_child_holding_its_parents_token_is_reported_as_fork_isolation() -> None:
    driver = replay_actions(impl_pool_factory, ContentConfig(8),
                            [admit([0]), fork(0), decode(1, 1), decode(0, 0)])
    parent, child = driver.requests[0], driver.requests[1]
    assert parent.table != child.table  # copy-on-write gave the child its own block
    # Corrupt the child's second slot with the parent's K/V of the same position.
    driver.store.kv[:, :, child.table[0], 1] = driver.store.kv[:, :, parent.table[0], 1]
    with pytest.raises(Divergence) as caught:
        driver.check()
    assert caught.value.caught_by == "fork-isolation"
    assert "fork relative request 0" in caught.value.message


class RefusesEveryWrite(BlockStore):
    """A store whose guard refuses everything: legal writes included."""

    def _check_writable(self, op: str, block_ids: object) -> None:
        raise CopyOnWriteError(f"{op}: refused")


def test_a_store_refusing_a_legal_write_is_a_divergence() -> None:
    failure = failure_of([admit([0, 1, 1])], RefusesEveryWrite)
    assert failure.caught_by == "legal-write-refused"
    assert "write(slots=[2, 3, 4]" in failure.message and "CopyOnWriteError" in failure.message


def test_a_content_failure_saves_a_trace_that_replays_to_the_same_failure(tmp_path) -> None:
    mutant = ensure_registered()["copy-only-k"]
    store_cls = store_cls_for(mutant.factory)
    failure = failure_of([admit([1, 1, 0]), fork(0), decode(0, 0), decode(1, 1)], store_cls)
    path = failure.trace().save(tmp_path / "copy-only-k.json")

    trace = Trace.load(path)
    assert trace.level == "content" and trace.config["store"]["block_size"] == 2
    assert [s.op for s in trace.steps] == ["admit", "fork", "decode"]  # up to the failure
    with pytest.raises(Divergence) as again:
        replay_actions(mutant.factory, ContentConfig.from_json(trace.config), trace.steps,
                       store_cls=store_cls)
    assert again.value.caught_by == failure.caught_by == "gather-matches-tokens"
    assert again.value.message == failure.message
    # kvspec replay's way: by target name, as the written pytest function does
    replayed = replay_content_trace(trace, "mutant:copy-only-k")
    assert not replayed.ok and replayed.divergence.message == failure.message
    assert replay_content_trace(trace, "impl").ok  # the correct store passes the same story


# ------------------------------------------------------------------- devices, attention


def recorded_run() -> tuple[list[Step], ContentConfig]:
    """The longest example of a short seeded run: a recorded sequence of actions."""
    runs: list[ContentDriver] = []
    result = run_check(impl_pool_factory, level="content", dtype=torch.float16,
                       on_example=lambda harness: runs.append(harness.driver),
                       **{**QUICK, "max_examples": 10})
    assert result.passed, result.failure
    longest = max(runs, key=lambda d: len(d.steps))
    return list(longest.steps), longest.config


def test_a_recorded_run_gives_bit_identical_gathers_on_every_store_and_device() -> None:
    steps, config = recorded_run()
    assert any(s.op == "fork" for s in steps) and len(steps) > 10
    devices = ["cpu", "cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    compared = assert_same_gathers(steps, config, devices)
    assert compared >= 2 * (len(devices) - 1) * len(steps)


def test_stores_whose_bits_differ_fail_the_same_gathers_check() -> None:
    # Every content check passes on both stores; only the bits of never-written blocks
    # differ (as uninitialised memory would between devices). The comparison sees them.
    made: list[BlockStore] = []

    class DirtyFromTheSecondStoreOn(BlockStore):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)
            if len(made) > 1:
                self.kv.fill_(1.0)

    steps = [admit([0]), fork(0), decode(1, 1)]
    differs = r"after action 1 \(admit\(prompt=\[0\]\)\): gather 2 differs between cpu and cpu"
    with pytest.raises(AssertionError, match=differs):
        assert_same_gathers(steps, ContentConfig(8), ["cpu", "cpu"],
                            store_cls=DirtyFromTheSecondStoreOn)


def test_a_shadow_store_that_drifts_from_the_main_store_is_caught_after_the_action() -> None:
    # With the store on an accelerator the driver keeps a CPU shadow; here both are on the
    # CPU and the second store built (the shadow) writes every value negated.
    made: list[BlockStore] = []

    class NegatesFromTheSecondStoreOn(BlockStore):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)
            self.negate = len(made) > 1

        def write(self, slots: list[int], key: torch.Tensor, value: torch.Tensor, *,
                  layer: int | None = None) -> None:
            if self.negate:
                key, value = -key, -value
            super().write(slots, key, value, layer=layer)

    driver = replay_actions(impl_pool_factory, ContentConfig(8), [admit([0])], shadow=True)
    assert driver.shadow is not None  # the ordinary store agrees with its shadow
    failure = failure_of([admit([0])], NegatesFromTheSecondStoreOn, shadow=True)
    assert failure.caught_by == "device-bit-identical"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_paged_attention_through_a_machine_built_table_matches_dense_attention(
    dtype: torch.dtype,
) -> None:
    # Tables built by the scheduler: a prefix hit, a fork with copy-on-write, decodes.
    config = ContentConfig(10, num_layers=2, num_kv_heads=2, dtype=str(dtype).split(".")[1])
    driver = replay_actions(impl_pool_factory, config, [
        admit([0, 1, 1, 0, 1]), admit([0, 1, 1, 0, 0, 0, 1]), fork(1),
        decode(2, 1), decode(1, 0), decode(2, 0),
    ])
    hit_request = driver.requests[1]
    assert hit_request.table[:2] == driver.requests[0].table[:2]  # two blocks were hits
    expected = ExpectedKV(2, 2, 4, dtype)
    generator = torch.Generator().manual_seed(5)
    for request in driver.requests.values():
        n = len(request.tokens)
        key, value = expected.span(request.tokens, 0, n)
        query = torch.randn(3, 4, 4, generator=generator).to(dtype)
        out = driver.store.paged_attention(query, request.table, n, layer=1)
        tol = TOLERANCE[dtype]
        dense = dense_attention(query, key[1], value[1])
        torch.testing.assert_close(out.double(), dense, atol=tol, rtol=tol)
        k, _ = driver.store.gather(request.table, n, layer=1)
        assert torch.equal(bits(k), bits(key[1]))
