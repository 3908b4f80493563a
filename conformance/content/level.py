"""The content level, as the engines see it (:class:`~kvspec.conformance.level.Level`).

Random only: the exhaustive engine does not run it (each step reads K/V back through torch,
and the pool and manager levels already search the small scope exhaustively).
"""

from __future__ import annotations

from typing import Any

import torch
from hypothesis import strategies as st
from kvspec.conformance.content.driver import (
    CONTENT_CHECKS,
    ContentConfig,
    ContentDriver,
    load_content_factory,
    start_driver,
)
from kvspec.conformance.content.harness import simplify, start
from kvspec.conformance.content.values import DTYPES
from kvspec.conformance.level import Level, RunOptions
from kvspec.conformance.pool.driver import MODES
from kvspec.conformance.pool.targets import unsupported_operations

MIN_BLOCKS, MAX_BLOCKS = 3, 8
BLOCK_SIZE, HEAD_SIZE = 2, 4


def configs(_factory: Any, options: RunOptions) -> st.SearchStrategy[ContentConfig]:
    return st.builds(
        ContentConfig,
        num_blocks=st.integers(MIN_BLOCKS, MAX_BLOCKS),
        enable_caching=st.sampled_from([True, True, True, False]),
        profile=st.just(options.profile),
        mode=st.just(options.mode),
        block_size=st.just(BLOCK_SIZE),
        num_layers=st.integers(1, 2),
        num_kv_heads=st.integers(1, 2),
        head_size=st.just(HEAD_SIZE),
        dtype=st.just(options.dtype),
        device=st.just(options.device),
    )


def check_options(options: RunOptions) -> None:
    """The store's device must exist here and hold data (torch's own error says why not;
    ``meta`` tensors have shapes and no values, so there is nothing to compare)."""
    try:
        where = torch.empty(0, device=options.device).device
    except (RuntimeError, AssertionError) as exc:  # torch's "not compiled with CUDA" asserts
        raise ValueError(f"device {options.device!r} is not available: "
                         f"{' '.join(str(exc).split())}") from None
    if where.type == "meta":
        raise ValueError(f"device {options.device!r} holds no data (shapes only); the store "
                         "needs a device such as 'cpu' or 'cuda:0'")
    if options.dtype not in DTYPES:
        raise ValueError(f"dtype {options.dtype!r}; expected one of {sorted(DTYPES)}")


def replay_driver(factory: Any, config: ContentConfig, options: RunOptions) -> ContentDriver:
    return start_driver(factory, config, judge_bad_input=options.checks_bad_input)


CONTENT = Level(
    name="content",
    modes=MODES,
    config_from_json=ContentConfig.from_json,
    load_factory=load_content_factory,
    start=start,
    start_vocabulary=None,
    configs=configs,
    small_configs=lambda _factory, _options: [],
    replay_driver=replay_driver,
    simplify=simplify,
    situations=(),
    switched_off=unsupported_operations,
    check_options=check_options,
)
__all__ = ["CONTENT", "CONTENT_CHECKS"]
