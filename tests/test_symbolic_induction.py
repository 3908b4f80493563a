"""Induction proves every invariant for all depths, and needs its auxiliary invariants."""

from __future__ import annotations

import pytest
from kvspec.spec.profiles import CLASSIC, CURRENT
from kvspec.spec.symbolic.bmc import all_invariant_names
from kvspec.spec.symbolic.encoding import AUXILIARY_MEANING
from kvspec.spec.symbolic.induction import houdini, k_induction, prove
from kvspec.spec.symbolic.model import ModelConfig
from kvspec.spec.symbolic.twins import MUTANTS

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


# --------------------------------------------------------------------------- block symmetry
# Houdini asks each question of block 1 only (encoding.focused_terms); that is sound only
# because renaming blocks 1..N-1 changes neither the relation nor any candidate. These
# tests check both with z3, for the spec and every mutant, and that the focused terms of
# all blocks together are the full terms.

SYM = ModelConfig(num_blocks=4, table_len=2, num_hashes=3)


def _renamed(s, t, perm: dict[int, int]) -> list:
    """Constraints: state ``t`` is state ``s`` with block b renamed perm[b]."""
    import z3

    n = s.cfg.num_blocks
    out = []
    for name in ("ref", "hash", "inq", "idx", "handed", "before"):
        out += [getattr(t, name)[perm[b]] == getattr(s, name)[b] for b in range(n)]
    for name in ("ahead", "older"):
        out += [getattr(t, name)[perm[a]][perm[b]] == getattr(s, name)[a][b]
                for a in range(n) for b in range(n) if a != b]
    for q in range(s.cfg.num_requests):
        for j, v in enumerate(s.tbl[q]):
            image = v
            for b in range(n):
                image = z3.If(v == b, t.const(perm[b]), image)
            out.append(t.tbl[q][j] == image)
        out += [t.len[q] == s.len[q], t.nc[q] == s.nc[q], t.last[q] == s.last[q]]
    out.append(t.disc == s.disc)
    return out


def _transpositions(n: int) -> list[dict[int, int]]:
    out = []
    for a in range(1, n):
        for b in range(a + 1, n):
            perm = {c: c for c in range(n)}
            perm[a], perm[b] = b, a
            out.append(perm)
    return out


@pytest.mark.parametrize("mutant", [None, *MUTANTS])
def test_renaming_blocks_changes_neither_the_relation_nor_any_candidate(mutant):
    import z3
    from kvspec.spec.profiles import get_profile
    from kvspec.spec.symbolic.encoding import (
        SymState,
        auxiliary_terms,
        invariant_terms,
        transition,
    )
    from kvspec.spec.symbolic.model import all_ops
    from kvspec.spec.symbolic.twins import get_mutant

    m = get_mutant(mutant)
    cfg = ModelConfig(num_blocks=SYM.num_blocks, table_len=SYM.table_len,
                      num_hashes=SYM.num_hashes,
                      profile=get_profile(m.profile or "current") if m else CURRENT)
    ops = all_ops(cfg)
    s, s1, t, t1 = (SymState(cfg, tag, 8) for tag in ("s", "s1", "t", "t1"))
    op, op_t = s.op_var("op"), t.op_var("opt")
    for perm in _transpositions(cfg.num_blocks):
        image = op
        for i, o in enumerate(ops):
            if o.kind == "stray_free":
                j = ops.index(o._replace(arg=perm[o.arg]))
                image = z3.If(op == i, t.const(j), image)
        solver = z3.SolverFor("QF_BV")
        solver.add(*_renamed(s, t, perm), *_renamed(s1, t1, perm), op_t == image)
        solver.push()
        solver.add(*transition(s, s1, op, mutant))
        solver.add(z3.Not(z3.And(transition(t, t1, op_t, mutant))))
        assert solver.check() == z3.unsat, (mutant, perm)
        solver.pop()
        full_s = {**invariant_terms(s, mutant), **auxiliary_terms(s)}
        full_t = {**invariant_terms(t, mutant), **auxiliary_terms(t)}
        for name, term in full_s.items():
            solver.push()
            solver.add(term != full_t[name])
            assert solver.check() == z3.unsat, (mutant, name, perm)
            solver.pop()


def test_the_focused_terms_of_every_block_make_up_the_full_terms():
    import z3
    from kvspec.spec.symbolic.encoding import (
        SymState,
        auxiliary_terms,
        focused_terms,
        invariant_terms,
        symmetric_names,
    )

    s = SymState(SYM, "s", 8)
    full = {**invariant_terms(s), **auxiliary_terms(s)}
    assert set(full) == set(symmetric_names(SYM))
    parts = [focused_terms(s, None, b) for b in range(1, SYM.num_blocks)]
    for name, term in full.items():
        solver = z3.SolverFor("QF_BV")
        solver.add(term != z3.And([p[name] for p in parts]))
        assert solver.check() == z3.unsat, name


def test_a_candidate_that_names_a_block_turns_the_focus_off(monkeypatch):
    """"Block 1 is never referenced" is not kept by renaming blocks; asked of block 1
    only, a step referencing block 2 would go unseen. Houdini must drop it."""
    from kvspec.spec.symbolic import induction

    cfg = ModelConfig(**SMALL)
    real = induction._candidates

    def with_block_two(s, mutant):
        return {**real(s, mutant), "two-unreferenced": s.ref[2] == 0}

    monkeypatch.setattr(induction, "_candidates", with_block_two)
    _alive, dropped, _ = houdini(cfg)
    assert "two-unreferenced" in dropped
