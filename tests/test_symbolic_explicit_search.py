"""The symmetry-reduced breadth-first search keeps shortest lengths: with and without the
reduction it stops at the same depth, and that depth is the plain search's."""

from __future__ import annotations

import pytest
from kvspec.spec.profiles import get_profile
from kvspec.spec.symbolic.explicit import (
    canonical_key,
    initial_world,
    run_ops,
    search,
    shortest_violation,
)
from kvspec.spec.symbolic.model import ModelConfig, Op
from kvspec.spec.symbolic.twins import MUTANTS, semantics_of


@pytest.mark.parametrize("mutant", sorted(MUTANTS))
def test_symmetry_reduction_finds_the_shortest_violation(mutant):
    m = MUTANTS[mutant]
    cfg = ModelConfig(num_blocks=3, table_len=2, profile=get_profile(m.profile or "current"))
    sem = semantics_of(m)
    plain = shortest_violation(cfg, sem, 6)
    reduced = search(cfg, 6, sem, symmetry=True)
    full = search(cfg, 6, sem, symmetry=False)
    expected = plain[0] if plain else -1
    assert reduced.broken_at == full.broken_at == expected


def test_the_spec_is_searched_to_completion_at_n4_and_breaks_nothing():
    report = search(ModelConfig(), 60, symmetry=True)
    assert report.complete
    assert report.broken == {}


def test_renamed_worlds_share_a_key_and_different_worlds_do_not():
    cfg = ModelConfig()
    a, _ = run_ops(cfg, [Op("allocate", 0), Op("cache", 0, 1), Op("allocate", 0)])
    b, _ = run_ops(cfg, [Op("allocate", 1), Op("cache", 1, 1), Op("allocate", 1)])
    c, _ = run_ops(cfg, [Op("allocate", 0), Op("cache", 0, 1), Op("allocate", 1)])
    d, _ = run_ops(cfg, [Op("allocate2", 0), Op("cache", 0, 1), Op("cache", 0, 2)])
    e, _ = run_ops(cfg, [Op("allocate2", 0), Op("cache", 0, 1), Op("cache", 0, 3)])
    assert canonical_key(cfg, a[-1]) == canonical_key(cfg, b[-1])  # requests renamed
    assert canonical_key(cfg, d[-1]) == canonical_key(cfg, e[-1])  # sibling hashes
    assert canonical_key(cfg, a[-1]) != canonical_key(cfg, c[-1])
    assert canonical_key(cfg, a[-1]) != canonical_key(cfg, initial_world(cfg))
