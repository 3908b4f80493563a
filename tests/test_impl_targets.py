"""ImplPool: kvspec's allocator through the pool target protocol, and target loading."""

from __future__ import annotations

import sys
import types
from typing import Any

import pytest
from kvspec.conformance.pool.protocol import PoolTarget
from kvspec.conformance.pool.targets import (
    OPERATIONS,
    ImplPool,
    TargetSpecError,
    impl_factory_for,
    impl_pool_factory,
    load_factory,
    unsupported_operations,
)
from kvspec.impl.block import KVCacheBlock
from kvspec.impl.block_pool import BlockPool
from kvspec.impl.errors import InvalidBlockError, KVCacheError


def observe(target: PoolTarget, num_blocks: int, hashes: list[bytes]) -> dict[str, Any]:
    """Everything the protocol lets a checker see."""
    return {
        "ref_cnt": [target.ref_cnt(i) for i in range(num_blocks)],
        "block_hash": [target.block_hash(i) for i in range(num_blocks)],
        "free": target.free_block_ids(),
        "num_free": target.get_num_free_blocks(),
        "usage": target.get_usage(),
        "cached": [target.get_cached_block(h) for h in hashes],
    }


def test_impl_pool_is_a_pool_target() -> None:
    assert isinstance(impl_pool_factory(4), PoolTarget)
    assert {
        "get_new_blocks",
        "touch",
        "free_blocks",
        "cache_block",
        "get_cached_block",
        "reset_prefix_cache",
        "fork_block",
        "get_num_free_blocks",
        "get_usage",
        "ref_cnt",
        "block_hash",
        "free_block_ids",
    } == OPERATIONS


def test_a_request_lifecycle_through_integer_ids() -> None:
    pool = impl_pool_factory(6)
    table = pool.get_new_blocks(3)
    assert table == [1, 2, 3]
    pool.cache_block(1, b"p0")
    pool.cache_block(2, b"p1")
    assert pool.block_hash(1) == b"p0"  # the group id bytes are not observed
    pool.free_blocks(list(reversed(table)))
    assert pool.free_block_ids() == [3, 4, 5, 2, 1]
    assert pool.get_cached_block(b"p0") == 1
    pool.touch([1, 2])
    assert [pool.ref_cnt(i) for i in (1, 2)] == [1, 1]
    assert pool.get_usage() == pytest.approx(0.4)
    pool.free_blocks([2, 1])
    assert pool.reset_prefix_cache() is True
    assert pool.get_cached_block(b"p0") is None
    assert pool.block_hash(1) is None


@pytest.mark.parametrize("profile", ["current", "classic"])
def test_null_block_observations_per_profile(profile: str) -> None:
    pool = impl_pool_factory(3, profile=profile)
    pool.touch([0, 0])
    pool.free_blocks([0])
    assert pool.ref_cnt(0) == (0 if profile == "current" else 1)
    assert 0 not in pool.free_block_ids()


def test_fork_through_ids_returns_the_copy_id() -> None:
    pool = impl_pool_factory(4)
    (b,) = pool.get_new_blocks(1)
    pool.touch([b])
    copy = pool.fork_block(b)
    assert copy != b and pool.ref_cnt(copy) == 1 and pool.ref_cnt(b) == 1
    assert pool.fork_block(b) == b


@pytest.mark.parametrize("profile", ["current", "classic"])
@pytest.mark.parametrize(
    "call",
    [
        lambda t: t.touch([1, 7]),
        lambda t: t.touch([-1]),
        lambda t: t.free_blocks([1, 7]),
        lambda t: t.free_blocks([1, 1]),
        lambda t: t.cache_block(7, b"x"),
        lambda t: t.cache_block(-1, b"x"),
        lambda t: t.fork_block(7),
        lambda t: t.fork_block(3),
        lambda t: t.get_new_blocks(4),
        lambda t: t.ref_cnt(7),
        lambda t: t.block_hash(-1),
    ],
    ids=[
        "touch-out-of-range",
        "touch-negative",
        "free-out-of-range",
        "free-twice",
        "cache-out-of-range",
        "cache-negative",
        "fork-out-of-range",
        "fork-free-block",
        "more-than-free",
        "ref_cnt-out-of-range",
        "block_hash-negative",
    ],
)
def test_out_of_range_and_bad_calls_are_refused_unchanged(profile: str, call: Any) -> None:
    target = impl_pool_factory(6, profile=profile)
    target.get_new_blocks(2)
    target.cache_block(1, b"h1")
    hashes = [b"h1", b"x"]
    before = observe(target, 6, hashes)
    with pytest.raises(KVCacheError):
        call(target)
    assert observe(target, 6, hashes) == before


def test_out_of_range_id_error_names_operation_and_id() -> None:
    target = impl_pool_factory(4)
    with pytest.raises(InvalidBlockError, match=r"touch: block 9 is out of range; expected 0\.\.3"):
        target.touch([9])


class CountingPool(BlockPool):
    """A stand-in for a mutant: a BlockPool subclass that records calls."""

    calls = 0

    def get_new_blocks(self, num_blocks: int) -> list[KVCacheBlock]:
        CountingPool.calls += 1
        return super().get_new_blocks(num_blocks)


def test_pool_cls_plugs_a_subclass_into_the_adapter() -> None:
    target = ImplPool(4, profile="classic", pool_cls=CountingPool)
    assert isinstance(target.pool, CountingPool)
    assert target.pool.profile.name == "classic"
    factory = impl_factory_for(CountingPool, unsupported=frozenset({"fork_block"}))
    CountingPool.calls = 0
    assert factory(4).get_new_blocks(1) == [1]
    assert CountingPool.calls == 1
    assert unsupported_operations(factory) == {"fork_block"}
    assert unsupported_operations(impl_pool_factory) == frozenset()


def test_load_factory_resolves_impl_and_module_paths() -> None:
    assert load_factory("impl") is impl_pool_factory
    assert load_factory("kvspec.conformance.pool.targets:impl_pool_factory") is impl_pool_factory
    assert load_factory("kvspec.conformance.pool.targets:ImplPool") is ImplPool


def test_load_factory_resolves_vllm_lazily(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = types.ModuleType("kvspec.conformance.upstream.vllm_pool")

    def vllm_pool_factory(num_blocks: int, **kwargs: Any) -> None:
        raise AssertionError("not called by load_factory")

    fake.vllm_pool_factory = vllm_pool_factory  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "kvspec.conformance.upstream.vllm_pool", fake)
    assert load_factory("vllm") is vllm_pool_factory


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "expected 'impl', 'vllm' or 'module.path:factory'"),
        ("no_colon_here", "exactly one ':'"),
        ("a:b:c", "exactly one ':'"),
        (":factory", "exactly one ':'"),
        ("kvspec.conformance.pool.targets:", "exactly one ':'"),
        ("kvspec_no_such_module_xyz:f", "cannot import module 'kvspec_no_such_module_xyz'"),
        ("kvspec.conformance.pool.targets:no_such_factory", "has no attribute 'no_such_factory'"),
        ("kvspec.conformance.pool.targets:OPERATIONS", "expected a callable factory"),
    ],
)
def test_load_factory_rejects_bad_target_strings_clearly(spec: str, message: str) -> None:
    with pytest.raises(TargetSpecError, match=message):
        load_factory(spec)
    assert issubclass(TargetSpecError, ValueError)


def test_misspelt_unsupported_entry_is_rejected_at_load(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("kvspec_test_targets_tmp")

    def factory(num_blocks: int, **kwargs: Any) -> ImplPool:
        return ImplPool(num_blocks, **kwargs)

    factory.unsupported = frozenset({"fork"})  # type: ignore[attr-defined]
    module.factory = factory  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "kvspec_test_targets_tmp", module)
    with pytest.raises(TargetSpecError, match=r"\['fork'\] are not PoolTarget operations"):
        load_factory("kvspec_test_targets_tmp:factory")
