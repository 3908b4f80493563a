"""Concrete worlds as z3 constraints: the honesty check between the two models.

The z3 encoding is only worth its proofs if it means what the executable spec means.
:func:`admits_exactly` fixes a symbolic pre-state to a concrete world, takes one
operation, and asks z3 two questions: is any post-state admitted, and is any admitted
post-state observably different from the one :func:`kvspec.spec.symbolic.explicit.step`
computes? The honest answers are "no, and (so) no" when the spec refuses, and "yes, and
no" otherwise. The tests ask this of many random reachable worlds and operations.
"""

from __future__ import annotations

import z3
from kvspec.spec.symbolic import encoding
from kvspec.spec.symbolic.encoding import SymState, auxiliary_terms
from kvspec.spec.symbolic.explicit import World, step
from kvspec.spec.symbolic.model import ModelConfig, all_ops
from kvspec.spec.symbolic.twins import get_mutant, semantics_of


def _insertion_rank(w: World) -> dict[int, tuple[int, int]]:
    """A total insertion order consistent with every hash's holder list (oldest first)."""
    rank: dict[int, tuple[int, int]] = {}
    for holders in w.pool.cached.values():
        for i, b in enumerate(holders):
            rank[b] = (i, b)
    return rank


def _index_key(cfg: ModelConfig, w: World, b: int) -> int:
    for h, holders in w.pool.cached.items():
        if b in holders:
            return cfg.hash_of_bytes(h)
    return 0


def world_values(cfg: ModelConfig, w: World) -> tuple[dict[str, int | bool], set[str]]:
    """The value of every encoding variable (tag-free names, as
    :meth:`SymState.variables` yields them) for world ``w``, and the names a caller can
    observe: counts, hashes, queue membership and order, index keys and order among
    holders of one hash, hand-outs, tables up to their length. (The order between two
    blocks that are not both queued, say, is bookkeeping nobody reads.)"""
    n = cfg.num_blocks
    queue = w.pool.free_queue
    pos = {b: i for i, b in enumerate(queue)}
    rank = _insertion_rank(w)
    allocated = dict(w.allocated)
    values: dict[str, int | bool] = {}
    seen: set[str] = set()
    for b in range(n):
        values[f"ref[{b}]"] = w.pool.ref_cnt[b]
        values[f"hash[{b}]"] = cfg.hash_of_bytes(w.pool.block_hash[b])
        values[f"inq[{b}]"] = b in pos
        values[f"idx[{b}]"] = _index_key(cfg, w, b)
        values[f"handed[{b}]"] = b in allocated
        values[f"before[{b}]"] = allocated.get(b, 0)
        seen |= {f"ref[{b}]", f"hash[{b}]", f"inq[{b}]", f"idx[{b}]", f"handed[{b}]"}
        if b in allocated:
            seen.add(f"before[{b}]")
    for a in range(n):
        for b in range(a + 1, n):
            values[f"ahead[{a}][{b}]"] = pos[a] < pos[b] if a in pos and b in pos else True
            values[f"older[{a}][{b}]"] = rank[a] < rank[b] if a in rank and b in rank else True
            if a in pos and b in pos:
                seen.add(f"ahead[{a}][{b}]")
            if a in rank and b in rank and values[f"idx[{a}]"] == values[f"idx[{b}]"]:
                seen.add(f"older[{a}][{b}]")
    for q, table in enumerate(w.tables):
        values[f"len[{q}]"] = len(table)
        values[f"nc[{q}]"] = w.ncached[q]
        values[f"last[{q}]"] = w.rlast[q]
        seen |= {f"len[{q}]", f"nc[{q}]", f"last[{q}]"}
        for j in range(cfg.table_len):
            values[f"tbl[{q}][{j}]"] = table[j] if j < len(table) else 0
            if j < len(table):
                seen.add(f"tbl[{q}][{j}]")
    values["disc"] = w.disciplined
    seen.add("disc")
    return values, seen


def fix_state(s: SymState, w: World) -> list[z3.ExprRef]:
    """Constraints making ``s`` the encoding of ``w`` (every variable fixed)."""
    cfg = s.cfg
    n = cfg.num_blocks
    queue = w.pool.free_queue
    pos = {b: i for i, b in enumerate(queue)}
    rank = _insertion_rank(w)
    allocated = dict(w.allocated)
    out: list[z3.ExprRef] = []
    for b in range(n):
        out += [
            s.ref[b] == w.pool.ref_cnt[b],
            s.hash[b] == cfg.hash_of_bytes(w.pool.block_hash[b]),
            s.inq[b] == (b in pos),
            s.idx[b] == _index_key(cfg, w, b),
            s.handed[b] == (b in allocated),
            s.before[b] == allocated.get(b, 0),
        ]
        for c in range(n):
            if c == b:
                continue
            ahead = pos[b] < pos[c] if b in pos and c in pos else b < c
            older = rank[b] < rank[c] if b in rank and c in rank else b < c
            out += [s.ahead[b][c] == ahead, s.older[b][c] == older]
    for q, table in enumerate(w.tables):
        out += [s.len[q] == len(table), s.nc[q] == w.ncached[q], s.last[q] == w.rlast[q]]
        for j in range(cfg.table_len):
            out.append(s.tbl[q][j] == (table[j] if j < len(table) else 0))
    out.append(s.disc == w.disciplined)
    return out


def observably_equal(s: SymState, w: World) -> z3.ExprRef:
    """``s`` shows what ``w`` shows: counts, hashes, queue order, index order (per hash),
    hand-outs, tables. (Relations between blocks outside the queue or index are
    bookkeeping nobody reads, so they are not compared.)"""
    cfg = s.cfg
    queue = w.pool.free_queue
    allocated = dict(w.allocated)
    eq: list[z3.ExprRef] = []
    for b in range(cfg.num_blocks):
        eq += [
            s.ref[b] == w.pool.ref_cnt[b],
            s.hash[b] == cfg.hash_of_bytes(w.pool.block_hash[b]),
            s.inq[b] == (b in queue),
            s.idx[b] == _index_key(cfg, w, b),
            s.handed[b] == (b in allocated),
        ]
        if b in allocated:
            eq.append(s.before[b] == allocated[b])
    for i, a in enumerate(queue):
        eq += [s.ahead[a][c] for c in queue[i + 1:]]
    for holders in w.pool.cached.values():
        for i, a in enumerate(holders):
            eq += [s.older[a][c] for c in holders[i + 1:]]
    for q, table in enumerate(w.tables):
        eq += [s.len[q] == len(table), s.nc[q] == w.ncached[q], s.last[q] == w.rlast[q]]
        eq += [s.tbl[q][j] == b for j, b in enumerate(table)]
    eq.append(s.disc == w.disciplined)
    return z3.And(eq)


def admits_exactly(
    cfg: ModelConfig,
    w: World,
    op_index: int,
    mutant: str | None = None,
    width: int | None = 8,
) -> str | None:
    """``None`` when z3's transition for operation ``op_index`` from ``w`` admits exactly
    the executable step's outcome; otherwise a sentence saying how they differ."""
    op = all_ops(cfg)[op_index]
    expected = step(cfg, w, op, semantics_of(get_mutant(mutant)))
    pre, post = SymState(cfg, "pre", width), SymState(cfg, "post", width)
    op_var = pre.op_var("op")
    solver = z3.SolverFor("QF_BV" if width else "QF_LIA")
    solver.add(*fix_state(pre, w))
    solver.add(op_var == op_index)
    solver.add(*encoding.transition(pre, post, op_var, mutant, only=[op_index]))
    verdict = solver.check()
    if expected is None:
        if verdict != z3.unsat:
            return f"{op.describe()}: the spec refuses it, z3 admits a post-state"
        return None
    if verdict != z3.sat:
        return f"{op.describe()}: the spec carries it out, z3 admits no post-state"
    solver.add(z3.Not(observably_equal(post, expected.world)))
    if solver.check() != z3.unsat:
        model = solver.model()
        differing = [
            f"{name}={model.eval(v, model_completion=True)}" for name, v in post.variables()
        ]
        return (
            f"{op.describe()}: z3 admits a post-state the spec does not produce "
            f"(one admitted state: {', '.join(differing)})"
        )
    return None


def auxiliary_hold(cfg: ModelConfig, w: World, width: int | None = 8) -> list[str]:
    """The auxiliary facts (encoding bookkeeping) that fail on the encoding of ``w``."""
    s = SymState(cfg, "aux", width)
    fixed = fix_state(s, w)
    failed: list[str] = []
    for name, term in auxiliary_terms(s).items():
        solver = z3.SolverFor("QF_BV" if width else "QF_LIA")
        solver.add(*fixed)
        solver.add(z3.Not(term))
        if solver.check() != z3.unsat:
            failed.append(name)
    return failed
