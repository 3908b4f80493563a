"""The spec's invariants hold on every state the spec reaches: no false alarm, by construction.

Each invariant says what it assumes. Those that assume nothing must hold after *any*
sequence of protocol operations (the spec refuses whatever would break them); the one that
assumes a usage discipline (``eviction-order``: hash-chained tables, freed tail first,
forked at their end) must hold on every state the machines' own moves reach, since those
moves keep the discipline. Both are shown here by exhaustive exploration at small bounds,
with the spec itself as the target, so the driver judges the spec's state alone.
"""

from __future__ import annotations

import math

import pytest
from kvspec.conformance.engines.exhaustive import explore
from kvspec.conformance.level import Recorder, RunOptions
from kvspec.conformance.levels import get_level
from kvspec.conformance.manager.driver import ManagerConfig
from kvspec.conformance.manager.targets import impl_manager_factory
from kvspec.conformance.pool.driver import PoolConfig
from kvspec.conformance.pool.harness import start as start_pool_harness
from kvspec.conformance.pool.spec_target import spec_pool_factory

POOL = get_level("pool")

# (blocks, depth): the deepest each pool size allows in a few seconds.
MACHINE_BOUNDS = ((2, 5), (3, 4), (4, 3), (5, 3))
PROTOCOL_BOUNDS = ((2, 6), (3, 4), (4, 3), (5, 2))


@pytest.mark.parametrize("profile", ["current", "classic"])
@pytest.mark.parametrize("caching", [True, False])
def test_every_pool_invariant_holds_on_every_state_the_machine_moves_reach(
    profile: str, caching: bool
) -> None:
    for blocks, depth in MACHINE_BOUNDS:
        result = explore(
            POOL, spec_pool_factory, RunOptions(profile=profile), Recorder(),
            max_depth=depth, seconds=math.inf,
            configs=[PoolConfig(blocks, caching, profile)], start_harness=start_pool_harness,
        )
        assert result.failure is None, result.failure
        assert result.waived == frozenset(), "a machine move left the usage discipline"
        assert result.depth == depth or result.complete
        assert result.states > blocks


@pytest.mark.parametrize("profile", ["current", "classic"])
@pytest.mark.parametrize("caching", [True, False])
def test_invariants_without_a_discipline_hold_after_any_protocol_sequence(
    profile: str, caching: bool
) -> None:
    for blocks, depth in PROTOCOL_BOUNDS:
        result = explore(
            POOL, spec_pool_factory, RunOptions(profile=profile), Recorder(),
            max_depth=depth, seconds=math.inf, configs=[PoolConfig(blocks, caching, profile)],
        )
        assert result.failure is None, result.failure
        assert result.waived <= {"eviction-order"}


def test_arbitrary_sequences_do_leave_the_eviction_order_discipline() -> None:
    """The check above is not vacuous: the protocol vocabulary reaches forward frees."""
    result = explore(POOL, spec_pool_factory, RunOptions(), Recorder(), max_depth=4,
                     seconds=math.inf, configs=[PoolConfig(3)])
    assert result.waived == {"eviction-order"}


@pytest.mark.parametrize("profile", ["current", "classic"])
def test_every_manager_invariant_holds_after_any_trusted_manager_sequence(profile: str) -> None:
    manager = get_level("manager")
    for blocks in (3, 4):
        for caching in (True, False):
            result = explore(
                manager, impl_manager_factory, RunOptions(profile=profile), Recorder(),
                max_depth=3, seconds=math.inf,
                configs=[ManagerConfig(blocks, 2, caching, profile)],
            )
            assert result.failure is None, result.failure
