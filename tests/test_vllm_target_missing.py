"""Without vLLM installed, the ``vllm`` target says how to install it (runs everywhere)."""

from __future__ import annotations

import sys

import pytest
from kvspec.conformance.upstream import vllm_pool as vllm_target
from kvspec.conformance.upstream.vllm_pool import VllmNotInstalledError, vllm_pool_factory


def test_the_vllm_target_module_imports_without_vllm() -> None:
    assert vllm_pool_factory.unsupported == frozenset({"fork_block"})
    assert vllm_target.VLLM_VERSION == "0.33.0"


def test_a_missing_vllm_points_at_the_install_script(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` fail
    with pytest.raises(VllmNotInstalledError, match="scripts/install-vllm-target.sh"):
        vllm_pool_factory(4)


def test_the_classic_profile_is_refused_before_vllm_is_imported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(ValueError, match="only the 'current' profile"):
        vllm_pool_factory(4, profile="classic")
