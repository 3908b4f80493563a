"""The hybrid level, as the engines see it (:class:`~kvspec.conformance.level.Level`)."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st
from kvspec.conformance.hybrid.driver import MODES, HybridConfig, HybridDriver, start_driver
from kvspec.conformance.hybrid.harness import SITUATIONS, simplify, start
from kvspec.conformance.hybrid.protocol import GroupTuple
from kvspec.conformance.hybrid.targets import load_hybrid_factory
from kvspec.conformance.hybrid.vocabulary import start_vocabulary
from kvspec.conformance.level import Level, RunOptions

#: The group configurations the random engine plays: full attention beside a sliding
#: window of the same and of a different block size, two windows, two full-attention
#: groups of different sizes, and three with a window listed *after* another that gives
#: back blocks the earlier one still reads: three groups whose last window is the
#: narrowest but has the widest blocks, two windows whose later one fits in a block, and
#: full attention beside two windows, the later one narrower. Where the later window has
#: given a block back (and it was evicted, or never filled past a connector's tokens)
#: its hit is shorter, and the hit search must come back to the earlier window, whose
#: blocks at the shorter length are others (a one-pass search is wrong only there).
GROUP_CONFIGS: tuple[tuple[GroupTuple, ...], ...] = (
    (("full", 2, None), ("sliding", 2, 4)),
    (("full", 4, None), ("sliding", 2, 3)),
    (("full", 2, None), ("sliding", 4, 5)),
    (("sliding", 2, 3), ("sliding", 2, 5)),
    (("full", 2, None), ("full", 4, None)),
    (("full", 4, None), ("sliding", 2, 3), ("sliding", 4, 2)),
    (("sliding", 2, 3), ("sliding", 2, 2)),
    (("full", 2, None), ("sliding", 2, 5), ("sliding", 2, 3)),
)
POOL_SIZES = (6, 7, 8, 10, 12, 16, 24, 40)


def _compare_hashes(factory: Any) -> bool:
    return not getattr(factory, "opaque_hashes", False)


def configs(factory: Any, options: RunOptions) -> st.SearchStrategy[HybridConfig]:
    return st.builds(
        HybridConfig,
        num_blocks=st.sampled_from(POOL_SIZES),
        groups=st.sampled_from(GROUP_CONFIGS),
        enable_caching=st.sampled_from([True, True, True, False]),
        profile=st.just(options.profile),
        compare_hashes=st.just(_compare_hashes(factory)),
    )


def small_configs(factory: Any, options: RunOptions) -> list[HybridConfig]:
    """The exhaustive engine's: full attention and a sliding window of 3, both at 2 tokens
    per block, and full attention at 2 beside full attention at 4, on 6 blocks."""
    return [HybridConfig(6, groups, True, options.profile,
                         compare_hashes=_compare_hashes(factory))
            for groups in ((("full", 2, None), ("sliding", 2, 3)), GROUP_CONFIGS[4])]


def replay_driver(factory: Any, config: HybridConfig, options: RunOptions) -> HybridDriver:
    return start_driver(factory, config, judge_bad_input=options.checks_bad_input)


HYBRID = Level(
    name="hybrid",
    modes=MODES,
    config_from_json=HybridConfig.from_json,
    load_factory=load_hybrid_factory,
    start=start,
    start_vocabulary=start_vocabulary,
    configs=configs,
    small_configs=small_configs,
    replay_driver=replay_driver,
    simplify=simplify,
    situations=SITUATIONS,
)
