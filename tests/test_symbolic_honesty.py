"""The z3 model says what the executable spec says, one operation at a time.

A random world is reached by running random request operations on the executable spec;
then for one more operation, z3's transition relation with the pre-state fixed to that
world must admit exactly the post-state the spec's step produces, and nothing when the
spec refuses. Mutants are checked the same way against their executable twins.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kvspec.spec.profiles import CLASSIC, CURRENT
from kvspec.spec.symbolic.concrete import admits_exactly, auxiliary_hold
from kvspec.spec.symbolic.explicit import initial_world, step, successors
from kvspec.spec.symbolic.model import ModelConfig, Op, all_ops
from kvspec.spec.symbolic.twins import MUTANTS, semantics_of

configs = st.builds(
    ModelConfig,
    num_blocks=st.integers(2, 5),
    num_requests=st.integers(1, 2),
    table_len=st.integers(1, 3),
    num_hashes=st.integers(1, 4),
    profile=st.sampled_from([CURRENT, CLASSIC]),
)


def _random_world(data, cfg: ModelConfig, max_steps: int = 10):
    w = initial_world(cfg)
    for _ in range(data.draw(st.integers(0, max_steps), label="steps")):
        options = list(successors(cfg, w))
        if not options:
            break
        _op, res = options[data.draw(st.integers(0, len(options) - 1), label="choice")]
        w = res.world
    return w


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), cfg=configs)
def test_z3_admits_exactly_the_specs_post_state_or_nothing_when_it_refuses(data, cfg):
    w = _random_world(data, cfg)
    op_index = data.draw(st.integers(0, len(all_ops(cfg)) - 1), label="op")
    assert admits_exactly(cfg, w, op_index) is None


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), cfg=configs, mutant=st.sampled_from(sorted(MUTANTS)))
def test_each_mutants_z3_twin_matches_its_executable_twin(data, cfg, mutant):
    w = _random_world(data, cfg)
    op_index = data.draw(st.integers(0, len(all_ops(cfg)) - 1), label="op")
    assert admits_exactly(cfg, w, op_index, mutant) is None


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), cfg=configs)
def test_unbounded_integers_encode_the_same_transitions(data, cfg):
    w = _random_world(data, cfg, max_steps=6)
    op_index = data.draw(st.integers(0, len(all_ops(cfg)) - 1), label="op")
    assert admits_exactly(cfg, w, op_index, width=None) is None


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), cfg=configs)
def test_the_auxiliary_invariants_hold_in_reachable_worlds(data, cfg):
    assert auxiliary_hold(cfg, _random_world(data, cfg)) == []


def test_a_refused_operation_is_admitted_by_neither_model():
    cfg = ModelConfig(num_blocks=2, num_requests=1, table_len=1)
    w = step(cfg, initial_world(cfg), Op("allocate", 0)).world
    # The table is full, and block 1 is the only block: a second allocation cannot happen.
    ops = all_ops(cfg)
    allocate = ops.index(Op("allocate", 0))
    assert step(cfg, w, ops[allocate]) is None
    assert admits_exactly(cfg, w, allocate) is None
    # A stray free of the held block is not offered either (the caller holds it).
    stray = ops.index(Op("stray_free", arg=1))
    assert step(cfg, w, ops[stray]) is None
    assert admits_exactly(cfg, w, stray) is None


@pytest.mark.parametrize(
    ("mutant", "blocks", "ops", "last"),
    [
        ("forward-free", 3,
         [Op("allocate", 0), Op("allocate", 0), Op("cache", 0, 1), Op("cache", 0, 2)],
         Op("free", 0)),
        ("stale-hash-on-reuse", 2,
         [Op("allocate", 0), Op("cache", 0, 1), Op("free", 0)],
         Op("allocate", 0)),
    ],
)
def test_a_mutant_changes_the_post_state_of_the_operation_its_bug_is_in(
    mutant, blocks, ops, last
):
    """The honesty check is not vacuous: there, the spec's post-state is not the mutant's,
    and z3 agrees with each."""
    cfg = ModelConfig(num_blocks=blocks, num_requests=1, table_len=2)
    w = initial_world(cfg)
    for op in ops:
        w = step(cfg, w, op).world
    spec_post = step(cfg, w, last).world
    mutant_post = step(cfg, w, last, semantics_of(MUTANTS[mutant])).world
    assert spec_post.key() != mutant_post.key()
    index = all_ops(cfg).index(last)
    assert admits_exactly(cfg, w, index, mutant) is None
    assert admits_exactly(cfg, w, index, None) is None
