"""Upstream vLLM's KVCacheManager with several KV-cache groups, through the hybrid protocol.

vLLM is an optional target (``scripts/install-vllm-target.sh [0.33.0|0.22.1]``), so this
module runs only where it is installed; which tests run depends on the version.
docs/upstream-divergences.md has the long runs and the 0.22.1 finding.
"""

from __future__ import annotations

import pytest

vllm = pytest.importorskip("vllm")

from kvspec.conformance.engines.pipeline import run_check  # noqa: E402
from kvspec.conformance.hybrid.driver import HybridConfig, start_driver  # noqa: E402
from kvspec.conformance.hybrid.targets import load_hybrid_factory  # noqa: E402
from kvspec.conformance.outcome import Divergence  # noqa: E402
from kvspec.conformance.upstream.vllm_hybrid import vllm_hybrid_factory  # noqa: E402
from test_conformance_hybrid import DOUBLE_HANDOUT, FA2_FA4  # noqa: E402

on_0_33 = pytest.mark.skipif(vllm.__version__ != "0.33.0", reason="needs vLLM 0.33.0")
on_0_22 = pytest.mark.skipif(vllm.__version__ != "0.22.1", reason="needs vLLM 0.22.1")


def test_vllm_is_the_hybrid_levels_builtin_upstream_target() -> None:
    assert load_hybrid_factory("vllm") is vllm_hybrid_factory


@on_0_33
def test_upstream_0_33_hybrid_manager_conforms_to_the_spec() -> None:
    result = run_check(vllm_hybrid_factory, target_name="vllm", level="hybrid",
                       max_examples=25, seed=1, database=None, progress=False,
                       exhaustive=False)
    assert result.passed, result.failure
    assert {"external-tokens", "sliding-hit-with-nulls"} <= set(result.stats.situations)


@on_0_22
def test_upstream_0_22_hands_one_block_to_two_groups() -> None:
    config = HybridConfig(7, FA2_FA4, profile="classic", compare_hashes=False)
    driver = start_driver(vllm_hybrid_factory, config)
    with pytest.raises(Divergence) as caught:
        for step in DOUBLE_HANDOUT:
            driver.apply(step)
    assert caught.value.caught_by == "one-group-per-block"
    assert caught.value.step_index == len(DOUBLE_HANDOUT)
