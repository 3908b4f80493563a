"""Induction proves every invariant for all depths, and needs its auxiliary invariants."""

from __future__ import annotations

import pytest
from kvspec.spec.profiles import CLASSIC, CURRENT
from kvspec.spec.symbolic.bmc import all_invariant_names
from kvspec.spec.symbolic.encoding import AUXILIARY_MEANING
from kvspec.spec.symbolic.induction import houdini, k_induction, prove
from kvspec.spec.symbolic.model import ModelConfig

SMALL = {"num_blocks": 3, "table_len": 2, "num_hashes": 3}


@pytest.mark.parametrize("profile", [CURRENT, CLASSIC], ids=lambda p: p.name)
def test_every_invariant_is_proved_at_the_default_size(profile):
    cfg = ModelConfig(profile=profile)
    names = all_invariant_names(cfg)
    report = prove(cfg, names)
    assert set(report.proved) == set(names)
    assert report.dropped == {}
    assert set(report.auxiliary_used) == set(AUXILIARY_MEANING)


def test_the_invariants_alone_are_not_inductive():
    """Why the auxiliary invariants exist: without them one step from a state satisfying
    every named invariant can break most of them."""
    cfg = ModelConfig(**SMALL)
    names = all_invariant_names(cfg)
    _alive, dropped, _ = houdini(cfg, candidates=names)
    assert {"eviction-order", "table-references", "free-iff-unreferenced"} <= set(dropped)


@pytest.mark.parametrize(
    ("left_out", "unproved"),
    [
        ("uncached-suffix-unhashed", {"eviction-order"}),
        ("shared-blocks-hashed", {"eviction-order", "uncached-suffix-unhashed"}),
        ("values-in-range", {"cached-prefix-chained", "eviction-order"}),
        ("table-shape", {"free-iff-unreferenced", "table-references", "no-double-allocation"}),
    ],
)
def test_each_auxiliary_invariant_carries_part_of_the_proof(left_out, unproved):
    cfg = ModelConfig(**SMALL)
    candidates = [*all_invariant_names(cfg), *AUXILIARY_MEANING]
    candidates.remove(left_out)
    _alive, dropped, _ = houdini(cfg, candidates=candidates)
    assert unproved <= set(dropped)


@pytest.mark.parametrize(
    ("mutant", "broken"),
    [
        ("forward-free", "eviction-order"),
        ("touch-leaves-in-queue", "free-iff-unreferenced"),
        ("fork-without-decrement", "table-references"),
        ("collapse-duplicate-hash", "hash-index-consistent"),
    ],
)
def test_a_mutants_broken_invariant_is_never_proved(mutant, broken):
    cfg = ModelConfig(**SMALL)
    report = prove(cfg, all_invariant_names(cfg), mutant)
    assert broken not in report.proved
    assert broken in report.dropped


def test_k_induction_proves_what_one_step_cannot_once_its_strengthening_is_given():
    cfg = ModelConfig(**SMALL)
    alive, _dropped, _ = houdini(cfg)
    # With the full strengthening, 1 step already suffices; k = 2 is no weaker.
    assert str(k_induction(cfg, "eviction-order", alive, 2)) == "unsat"
    # With no strengthening at all, 2 steps of eviction-order do not force a third.
    assert str(k_induction(cfg, "eviction-order", [], 2)) == "sat"
