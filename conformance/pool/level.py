"""The pool level, as the engines see it (:class:`~kvspec.conformance.level.Level`)."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st
from kvspec.conformance.level import Level, RunOptions
from kvspec.conformance.pool.driver import MODES, PoolConfig, PoolDriver, start_driver
from kvspec.conformance.pool.harness import SITUATIONS, simplify, start
from kvspec.conformance.pool.targets import load_factory, unsupported_operations
from kvspec.conformance.pool.vocabulary import start_vocabulary

MIN_BLOCKS, MAX_BLOCKS = 2, 8
"""Tiny pools: eviction, reuse and exhaustion only happen under pressure."""
SMALL_BLOCKS = (2, 3, 4)
"""The exhaustive engine's pool sizes."""


def configs(_factory: Any, options: RunOptions) -> st.SearchStrategy[PoolConfig]:
    return st.builds(
        PoolConfig,
        num_blocks=st.integers(MIN_BLOCKS, MAX_BLOCKS),
        enable_caching=st.sampled_from([True, True, True, False]),
        profile=st.just(options.profile),
        mode=st.just(options.mode),
    )


def small_configs(_factory: Any, options: RunOptions) -> list[PoolConfig]:
    """Pools of 1 to 3 usable blocks, caching on and off."""
    return [
        PoolConfig(n, caching, options.profile, options.mode)
        for n in SMALL_BLOCKS
        for caching in (True, False)
    ]


def replay_driver(factory: Any, config: PoolConfig, options: RunOptions) -> PoolDriver:
    return start_driver(factory, config, judge_bad_input=options.checks_bad_input)


POOL = Level(
    name="pool",
    modes=MODES,
    config_from_json=PoolConfig.from_json,
    load_factory=load_factory,
    start=start,
    start_vocabulary=start_vocabulary,
    configs=configs,
    small_configs=small_configs,
    replay_driver=replay_driver,
    simplify=simplify,
    situations=SITUATIONS,
    switched_off=unsupported_operations,
)
