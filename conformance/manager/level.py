"""The manager level, as the engines see it (:class:`~kvspec.conformance.level.Level`)."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st
from kvspec.conformance.level import Level, RunOptions
from kvspec.conformance.manager.driver import MODES, ManagerConfig, ManagerDriver, start_driver
from kvspec.conformance.manager.harness import (
    SITUATIONS,
    simplify,
    start,
    unsupported_bad_inputs,
)
from kvspec.conformance.manager.targets import load_manager_factory
from kvspec.conformance.manager.vocabulary import start_vocabulary

MIN_BLOCKS, MAX_BLOCKS = 3, 10
SMALL_BLOCKS = (3, 4)
"""The exhaustive engine's pool sizes (block size 2)."""


def _compare_hashes(factory: Any) -> bool:
    return not getattr(factory, "opaque_hashes", False)


def configs(factory: Any, options: RunOptions) -> st.SearchStrategy[ManagerConfig]:
    return st.builds(
        ManagerConfig,
        num_blocks=st.integers(MIN_BLOCKS, MAX_BLOCKS),
        block_size=st.sampled_from([2, 4]),
        enable_caching=st.sampled_from([True, True, True, False]),
        profile=st.just(options.profile),
        compare_hashes=st.just(_compare_hashes(factory)),
    )


def small_configs(factory: Any, options: RunOptions) -> list[ManagerConfig]:
    return [
        ManagerConfig(n, 2, caching, options.profile, compare_hashes=_compare_hashes(factory))
        for n in SMALL_BLOCKS
        for caching in (True, False)
    ]


def replay_driver(factory: Any, config: ManagerConfig, options: RunOptions) -> ManagerDriver:
    return start_driver(factory, config, judge_bad_input=options.checks_bad_input)


MANAGER = Level(
    name="manager",
    modes=MODES,
    config_from_json=ManagerConfig.from_json,
    load_factory=load_manager_factory,
    start=start,
    start_vocabulary=start_vocabulary,
    configs=configs,
    small_configs=small_configs,
    replay_driver=replay_driver,
    simplify=simplify,
    situations=SITUATIONS,
    switched_off=lambda factory: frozenset(f"bad:{k}" for k in unsupported_bad_inputs(factory)),
)
