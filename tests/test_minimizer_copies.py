"""The minimizer replays candidates from copies of a driver that took their shared prefix;
what it reports must be what fresh replays give, even for a target whose copies lie."""

from __future__ import annotations

from typing import Any

from kvspec.conformance.engines.minimize import minimize, replay
from kvspec.conformance.level import RunOptions
from kvspec.conformance.levels import get_level
from kvspec.conformance.mutants import MUTANTS
from kvspec.conformance.mutants.pool import ForwardOrderFree
from kvspec.conformance.outcome import Divergence
from kvspec.conformance.pool.driver import PoolConfig
from kvspec.conformance.pool.targets import ImplPool
from kvspec.conformance.trace import Step
from minimality import assert_one_minimal

POOL = get_level("pool")
OPTIONS = RunOptions()


class _ForgetsOnCopy(ImplPool):
    """The forward-free mutant, whose copies are fresh pools: copying loses its state."""

    def __init__(self, num_blocks: int, *, enable_caching: bool = True,
                 profile: str = "current") -> None:
        super().__init__(num_blocks, enable_caching=enable_caching, profile=profile,
                         pool_cls=ForwardOrderFree)
        self.settings = (num_blocks, enable_caching, profile)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return _fresh, self.settings


def _fresh(num_blocks: int, enable_caching: bool, profile: str) -> _ForgetsOnCopy:
    return _ForgetsOnCopy(num_blocks, enable_caching=enable_caching, profile=profile)


def _failure(factory: Any, steps: list[Step], config: PoolConfig) -> Divergence:
    found = replay(POOL, factory, config, OPTIONS, steps)
    assert found is not None
    return found


PADDED = [
    Step("get_new_blocks", {"num_blocks": 1}),
    Step("get_new_blocks", {"num_blocks": 1}),
    Step("get_cached_block", {"block_hash": b"a"}),
    Step("get_new_blocks", {"num_blocks": 2}),
    Step("get_cached_block", {"block_hash": b"b"}),
    Step("free_blocks", {"block_ids": [3, 4]}),
]


def test_a_padded_failure_minimized_from_copies_is_what_fresh_replays_make_it() -> None:
    factory = MUTANTS["forward-free"].factory
    failure = _failure(factory, PADDED, PoolConfig(5))
    found = minimize(POOL, factory, OPTIONS, failure)
    fresh = minimize(POOL, factory, OPTIONS, failure, copies=False)
    assert found.reproduced and fresh.reproduced
    assert found.failure.steps == fresh.failure.steps
    assert found.failure.config == fresh.failure.config
    assert_one_minimal(POOL, factory, found.failure)


def test_a_target_whose_copies_forget_its_state_is_minimized_by_fresh_replays() -> None:
    failure = _failure(_ForgetsOnCopy, PADDED, PoolConfig(5))
    found = minimize(POOL, _ForgetsOnCopy, OPTIONS, failure)
    fresh = minimize(POOL, _ForgetsOnCopy, OPTIONS, failure, copies=False)
    assert found.reproduced
    assert found.failure.steps == fresh.failure.steps
    assert_one_minimal(POOL, _ForgetsOnCopy, found.failure)
