"""The block pool in z3: state variables, initial state, transition relation, invariants.

One state is a fixed set of integer and boolean variables (:class:`SymState`):

``ref[b]``, ``hash[b]``
    ref count and content hash (0 = none, else ``1..H``; see :mod:`kvspec.spec.symbolic.model`).
``inq[b]``, ``ahead[a][b]``
    free-queue membership and order. Instead of a list (positions shift on every pop) or
    integer timestamps (which need arithmetic and grow without bound), the order is a
    precedence relation: ``ahead[a][b]`` says a is nearer the front than b. It is only
    read for two queued blocks. One variable per pair a < b, ``ahead[b][a]`` being its
    negation, so the relation can never tie or hold a two-cycle. Popping takes the
    queued block ahead of every other queued one; ``touch`` just clears ``inq``; a freed
    batch is put behind (append) or in front of (prepend) every block already queued.
    The state is then finite and purely boolean apart from small counts, which is what a
    SAT-based solver handles best.
``idx[b]``, ``older[a][b]``
    the prefix-cache index: ``idx[b] = h`` when the index maps ``h`` to ``b`` (0: not in
    the index), and ``older[a][b]`` when a entered the index before b. "The first
    inserted holder of h" is the holder of h older than every other holder.
``handed[b]``, ``before[b]``
    the blocks handed out by the step that led here, and each block's ref count before
    that step (``no-double-allocation`` judges a hand-out, not a state).
``tbl[r][j]``, ``len[r]``, ``nc[r]``, ``last[r]``
    request r's block table, its length, how many leading blocks it has cached, and the
    hash of the last cached one (0: none).

The transition relation is *functional*: an integer ``op`` picks one instance of
:func:`kvspec.spec.symbolic.model.all_ops`; each variable's next value is an ``If`` over the
instances that change it, else its old value; the chosen instance's guard must hold.
A mutant name switches the few terms its bug changes (see :mod:`kvspec.spec.symbolic.twins`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import z3
from kvspec.spec.symbolic.model import ModelConfig, Op, all_ops

Expr = z3.ExprRef


def _number(v: Expr) -> int:
    return v.as_signed_long() if z3.is_bv_value(v) else v.as_long()


def raise_if_interrupted(solver: z3.Solver) -> None:
    """z3 answers "unknown" when Ctrl-C reaches it inside a query (it catches the signal
    itself); turn that back into the ``KeyboardInterrupt`` it was, so that no caller
    mistakes an interrupted search for a finished one."""
    reason = solver.reason_unknown()
    if "cancel" in reason or "interrupt" in reason:
        raise KeyboardInterrupt(reason)


def _sel(values: list[Expr], index: Expr, default: Expr | None = None) -> Expr:
    """``values[index]`` for a symbolic index, as an ``If`` chain."""
    out = values[-1] if default is None else default
    for i in range(len(values) - 1 if default is None else len(values), 0, -1):
        out = z3.If(index == i - 1, values[i - 1], out)
    return out


class SymState:
    """The variables of one state (``tag`` keeps names unique across an unrolling)."""

    def __init__(self, cfg: ModelConfig, tag: str, width: int | None = None) -> None:
        n, r, lim = cfg.num_blocks, cfg.num_requests, cfg.table_len
        self.cfg = cfg
        self.tag = tag
        self.width = width

        def ints(name: str, k: int) -> list[Expr]:
            return [self.var(f"{name}[{i}]@{tag}") for i in range(k)]

        self.ref = ints("ref", n)
        self.hash = ints("hash", n)
        self.inq = [z3.Bool(f"inq[{b}]@{tag}") for b in range(n)]
        self.ahead = self._relation("ahead", n)
        self.idx = ints("idx", n)
        self.older = self._relation("older", n)
        self.handed = [z3.Bool(f"handed[{b}]@{tag}") for b in range(n)]
        self.before = ints("before", n)
        self.tbl = [ints(f"tbl[{q}]", lim) for q in range(r)]
        self.len = ints("len", r)
        self.nc = ints("nc", r)
        self.last = ints("last", r)
        self.disc = z3.Bool(f"disc@{tag}")
        self._cache: dict[str, object] = {}

    # ------------------------------------------------------------ numbers of either sort

    def _relation(self, name: str, n: int) -> list[list[Expr]]:
        """A strict total order over blocks: one variable per pair a < b, and
        ``rel[b][a]`` is its negation, so no state can hold a cycle of two or a tie (the
        diagonal is False)."""
        upper = {
            (a, b): z3.Bool(f"{name}[{a}][{b}]@{self.tag}")
            for a in range(n) for b in range(a + 1, n)
        }
        return [
            [upper[a, b] if a < b else z3.Not(upper[b, a]) if a > b else z3.BoolVal(False)
             for b in range(n)]
            for a in range(n)
        ]

    def var(self, name: str) -> Expr:
        """An integer variable: unbounded, or a ``width``-bit signed bit-vector."""
        return z3.Int(name) if self.width is None else z3.BitVec(name, self.width)

    def const(self, value: int) -> Expr:
        return z3.IntVal(value) if self.width is None else z3.BitVecVal(value, self.width)

    def count(self, conditions: list[Expr]) -> Expr:
        """How many of ``conditions`` hold."""
        one, zero = self.const(1), self.const(0)
        if not conditions:
            return zero
        return z3.Sum([z3.If(c, one, zero) for c in conditions])

    def op_var(self, name: str) -> Expr:
        """The variable choosing the operation of a step (same sort as the state)."""
        return self.var(name)

    def variables(self) -> Iterator[tuple[str, Expr]]:
        """Every variable with a tag-free name, for frame conditions and decoding."""
        n = self.cfg.num_blocks
        for name in ("ref", "hash", "inq", "idx", "handed", "before"):
            for b, v in enumerate(getattr(self, name)):
                yield f"{name}[{b}]", v
        for name in ("ahead", "older"):
            rel = getattr(self, name)
            for a in range(n):
                for b in range(a + 1, n):
                    yield f"{name}[{a}][{b}]", rel[a][b]
        for q in range(self.cfg.num_requests):
            for j, v in enumerate(self.tbl[q]):
                yield f"tbl[{q}][{j}]", v
            yield f"len[{q}]", self.len[q]
            yield f"nc[{q}]", self.nc[q]
            yield f"last[{q}]", self.last[q]
        yield "disc", self.disc

    # ------------------------------------------------------------ derived terms (memoised)

    def _memo(self, name: str, make: Callable[[], object]) -> object:
        if name not in self._cache:
            self._cache[name] = make()
        return self._cache[name]

    @property
    def num_free(self) -> Expr:
        return self._memo("num_free", lambda: self.count(list(self.inq)))

    @property
    def at_front(self) -> list[Expr]:
        """``at_front[b]``: b is queued ahead of every other queued block (``popleft``)."""

        def make() -> list[Expr]:
            n = self.cfg.num_blocks
            return [
                z3.And(
                    self.inq[b],
                    *[z3.Or(z3.Not(self.inq[c]), self.ahead[b][c])
                      for c in range(n) if c != b],
                )
                for b in range(n)
            ]

        return self._memo("at_front", make)  # type: ignore[return-value]

    def first_holder(self, h: int) -> list[Expr]:
        """``first_holder(h)[b]``: b is the oldest index entry for hash h."""

        def make() -> list[Expr]:
            n = self.cfg.num_blocks
            return [
                z3.And(
                    self.idx[b] == h,
                    *[z3.Or(self.idx[c] != h, self.older[b][c])
                      for c in range(n) if c != b],
                )
                for b in range(n)
            ]

        return self._memo(f"first{h}", make)  # type: ignore[return-value]

    def slots(self, b: int) -> Expr:
        """How many table slots, over all requests, hold block b."""

        def make() -> Expr:
            return self.count([
                z3.And(j < self.len[q], self.tbl[q][j] == b)
                for q in range(self.cfg.num_requests)
                for j in range(self.cfg.table_len)
            ])

        return self._memo(f"slots{b}", make)  # type: ignore[return-value]

    def count_in_table(self, q: int, b: int) -> Expr:
        return self.count([
            z3.And(j < self.len[q], self.tbl[q][j] == b) for j in range(self.cfg.table_len)
        ])

    def ref_of(self, block: Expr) -> Expr:
        """``ref[block]``; the null block's for an id out of range (which no reachable
        state has), so that renaming blocks 1..N-1 renames the term too."""
        return _sel(self.ref, block, self.ref[0])

    def hash_of(self, block: Expr) -> Expr:
        return _sel(self.hash, block, self.hash[0])


def block_id(s: SymState, flags: list[Expr]) -> Expr:
    """The id of the one block whose flag holds (0 if none)."""
    out: Expr = s.const(0)
    for b in range(len(flags) - 1, -1, -1):
        out = z3.If(flags[b], b, out)
    return out


def parent_term(s: SymState, h: Expr) -> Expr:
    out: Expr = s.const(0)
    for v in s.cfg.hashes:
        out = z3.If(h == v, s.const(s.cfg.parent(v)), out)
    return out


# --------------------------------------------------------------------------- initial state


def initial(s: SymState) -> list[Expr]:
    """A fresh pool: blocks 1..N-1 queued in id order, nothing hashed, tables empty."""
    cfg = s.cfg
    out: list[Expr] = []
    n = cfg.num_blocks
    for b in range(n):
        out += [
            s.ref[b] == 0, s.hash[b] == 0, s.idx[b] == 0,
            s.inq[b] == (b != 0),
            z3.Not(s.handed[b]), s.before[b] == 0,
        ]
        for c in range(n):
            if c != b:
                out += [s.ahead[b][c] == (b < c), s.older[b][c] == (b < c)]
    for q in range(cfg.num_requests):
        out += [s.len[q] == 0, s.nc[q] == 0, s.last[q] == 0]
        out += [v == 0 for v in s.tbl[q]]
    out.append(s.disc)
    return out


# --------------------------------------------------------------------------- transitions


@dataclass
class _Effect:
    """One operation instance: its guard and the new value of each variable it changes."""

    guard: Expr
    updates: dict[str, Expr] = field(default_factory=dict)


class _Ops:
    """Builds each operation's effect on a pre-state, with a mutant's changes."""

    def __init__(self, s: SymState, mutant: str | None) -> None:
        self.s = s
        self.cfg = s.cfg
        self.m = mutant
        self.n = s.cfg.num_blocks
        self.counts_null = s.cfg.profile.count_null_refs
        self.prepends = s.cfg.profile.prepend_unhashed_on_free

    # -- shared pieces

    def _pop(self, e: _Effect, enabled: Expr) -> Expr:
        """``get_new_blocks(1)`` when ``enabled``: pop the front, evict, ref 1; its id."""
        s = self.s
        popped = [z3.And(enabled, f) for f in s.at_front]
        for b in range(self.n):
            e.updates[f"inq[{b}]"] = z3.And(s.inq[b], z3.Not(popped[b]))
            e.updates[f"ref[{b}]"] = z3.If(popped[b], 1, s.ref[b])
            e.updates[f"handed[{b}]"] = popped[b]
            if self.m not in ("stale-hash-on-reuse", "hash-cleared-after-ref-set"):
                # Lazy eviction, as upstream: only a block indexed under its hash loses it.
                evict = z3.And(popped[b], s.hash[b] != 0, s.idx[b] == s.hash[b])
                e.updates[f"hash[{b}]"] = z3.If(evict, 0, s.hash[b])
                e.updates[f"idx[{b}]"] = z3.If(evict, 0, s.idx[b])
        return block_id(s, popped)

    def _touch(self, e: _Effect, touched: list[Expr]) -> None:
        """``touch``: a zero-ref block leaves the queue, then every block gets +1."""
        s = self.s
        counts_null = self.counts_null or self.m == "touch-counts-null"
        for b in range(self.n):
            if b == 0:
                if counts_null:
                    e.updates["ref[0]"] = s.ref[0] + s.count([touched[0]])
                continue
            e.updates[f"ref[{b}]"] = s.ref[b] + s.count([touched[b]])
            if self.m != "touch-leaves-in-queue":
                e.updates[f"inq[{b}]"] = z3.And(
                    s.inq[b], z3.Not(z3.And(touched[b], s.ref[b] == 0))
                )

    def _free(self, e: _Effect, counts: list[Expr], position: list[Expr]) -> Expr:
        """``free_blocks`` of a batch given as per-block counts and the batch position at
        which each block would reach 0 (smaller = earlier). Returns the spec's guard.

        A block whose count is the constant 0 is not in the batch: its count, queue
        membership and order among unfreed blocks stay as they are, and no term is built
        for them (a stray free lists one block; building all N^2 order terms for each of
        the N stray frees dominated the construction of the relation)."""
        s, n = self.s, self.n
        listed = [not (z3.is_bv_value(c) or z3.is_int_value(c)) or _number(c) != 0
                  for c in counts]
        guard = z3.And([s.ref[b] - counts[b] >= 0 for b in range(1, n) if listed[b]])
        trusting = None
        if self.m == "free-of-ref0-goes-negative":
            # Any non-null block at <= 0: decrement all non-null blocks, queue nothing.
            trusting = z3.Or([z3.And(counts[b] > 0, s.ref[b] <= 0)
                              for b in range(1, n) if listed[b]])
            guard = z3.Or(trusting, guard)
        newly: list[Expr] = [z3.BoolVal(False)] * n
        appended: list[Expr] = [z3.BoolVal(False)] * n
        for b in range(n):
            if b == 0:
                new_ref = s.ref[0] - counts[0] if self.counts_null else s.ref[0]
                if trusting is not None and self.counts_null:
                    new_ref = z3.If(trusting, s.ref[0], new_ref)
                e.updates["ref[0]"] = new_ref
                continue
            if not listed[b]:
                continue
            new_ref = s.ref[b] - counts[b]
            reaches_zero = z3.And(counts[b] > 0, new_ref == 0)
            if trusting is not None:
                reaches_zero = z3.And(z3.Not(trusting), reaches_zero)
            newly[b] = reaches_zero
            split = self.prepends and self.m != "all-frees-appended"
            appended[b] = z3.And(reaches_zero, s.hash[b] != 0) if split else reaches_zero
            e.updates[f"ref[{b}]"] = new_ref
            e.updates[f"inq[{b}]"] = z3.Or(s.inq[b], reaches_zero)
        # New order: prepended blocks, then the old queue, then appended blocks; inside
        # each part, batch order.
        for a in range(n):  # one variable per pair a < b (see SymState._relation)
            for b in range(a + 1, n):
                if not (listed[a] or listed[b]):
                    continue
                prepended_a = z3.And(newly[a], z3.Not(appended[a]))
                if not listed[b]:
                    value = z3.If(newly[a], prepended_a, s.ahead[a][b])
                elif not listed[a]:
                    value = z3.If(newly[b], appended[b], s.ahead[a][b])
                else:
                    both = z3.If(
                        appended[a] == appended[b], position[a] < position[b], prepended_a
                    )
                    value = z3.If(
                        z3.And(newly[a], newly[b]), both,
                        z3.If(newly[a], prepended_a,
                              z3.If(newly[b], appended[b], s.ahead[a][b])),
                    )
                e.updates[f"ahead[{a}][{b}]"] = value
        if self.m == "null-returned-to-queue":
            joins = z3.And(counts[0] > 0, z3.Not(s.inq[0]))
            e.updates["inq[0]"] = z3.Or(s.inq[0], joins)
            for b in range(1, n):  # the null block goes behind everything
                e.updates[f"ahead[0][{b}]"] = z3.And(z3.Not(joins), s.ahead[0][b])
                e.updates[f"ahead[{b}][0]"] = z3.Or(
                    joins, e.updates.get(f"ahead[{b}][0]", s.ahead[b][0])
                )
        return guard

    def _append_to_table(self, e: _Effect, q: int, block: Expr) -> None:
        s = self.s
        for j in range(self.cfg.table_len):
            e.updates[f"tbl[{q}][{j}]"] = z3.If(s.len[q] == j, block, s.tbl[q][j])
        e.updates[f"len[{q}]"] = s.len[q] + 1

    # -- the operations

    def allocate(self, q: int) -> _Effect:
        s = self.s
        e = _Effect(z3.And(s.len[q] < self.cfg.table_len, s.num_free >= 1, z3.Or(s.at_front)))
        y = self._pop(e, z3.BoolVal(True))
        self._append_to_table(e, q, y)
        return e

    def allocate2(self, q: int) -> _Effect:
        """``get_new_blocks(2)``: the two queued blocks nearest the front, front first."""
        s, n = self.s, self.n
        # The front is the queued block ahead of every other queued block; the second is
        # the queued block ahead of every other queued block but the front. The order
        # holds one of ahead[a][b], ahead[b][a] for each pair (SymState._relation), so
        # at most one block can be ahead of all others, and at most one of all others but
        # the front: "some front and some second" is "exactly one of each", true of every
        # queue the spec builds. (Counting the blocks ahead of each, as a rank, says the
        # same with N counts of N terms; an order with a cycle, which no reachable state
        # has, disables the pop either way, as it disables allocate's.)
        first = s.at_front
        second = [
            z3.And(s.inq[b], z3.Not(first[b]),
                   *[z3.Or(z3.Not(s.inq[c]), s.ahead[b][c], first[c])
                     for c in range(n) if c != b])
            for b in range(n)
        ]
        e = _Effect(z3.And(s.len[q] + 2 <= self.cfg.table_len, s.num_free >= 2,
                           z3.Or(first), z3.Or(second)))
        for b in range(n):
            popped = z3.Or(first[b], second[b])
            e.updates[f"inq[{b}]"] = z3.And(s.inq[b], z3.Not(popped))
            e.updates[f"ref[{b}]"] = z3.If(popped, 1, s.ref[b])
            e.updates[f"handed[{b}]"] = popped
            if self.m not in ("stale-hash-on-reuse", "hash-cleared-after-ref-set"):
                evict = z3.And(popped, s.hash[b] != 0, s.idx[b] == s.hash[b])
                e.updates[f"hash[{b}]"] = z3.If(evict, 0, s.hash[b])
                e.updates[f"idx[{b}]"] = z3.If(evict, 0, s.idx[b])
        y1, y2 = block_id(s, first), block_id(s, second)
        for j in range(self.cfg.table_len):
            e.updates[f"tbl[{q}][{j}]"] = z3.If(
                s.len[q] == j, y1, z3.If(s.len[q] + 1 == j, y2, s.tbl[q][j]))
        e.updates[f"len[{q}]"] = s.len[q] + 2
        return e

    def free_tail(self, q: int) -> _Effect:
        """``free_blocks([last block])``; the table drops it, and its cached prefix too
        when the block was in it."""
        s = self.s
        x = _sel(s.tbl[q], s.len[q] - 1)
        counts = [z3.If(x == b, s.const(1), s.const(0)) for b in range(self.n)]
        position = [s.const(0) for _ in range(self.n)]
        e = _Effect(z3.BoolVal(True))
        guard = self._free(e, counts, position)
        e.guard = z3.And(s.len[q] >= 1, guard)
        e.updates[f"len[{q}]"] = s.len[q] - 1
        uncache = s.nc[q] == s.len[q]
        e.updates[f"nc[{q}]"] = z3.If(uncache, s.nc[q] - 1, s.nc[q])
        e.updates[f"last[{q}]"] = z3.If(uncache, parent_term(s, s.last[q]), s.last[q])
        return e

    def cache(self, q: int, h: int) -> _Effect:
        s = self.s
        x = _sel(s.tbl[q], s.nc[q])
        e = _Effect(z3.And(
            s.nc[q] < s.len[q], s.last[q] == self.cfg.parent(h),
            x != 0, s.ref_of(x) > 0, s.hash_of(x) == 0,
        ))
        for b in range(self.n):
            is_x = x == b
            e.updates[f"hash[{b}]"] = z3.If(is_x, h, s.hash[b])
            other = s.idx[b]
            if self.m == "collapse-duplicate-hash":
                other = z3.If(s.idx[b] == h, 0, s.idx[b])
            e.updates[f"idx[{b}]"] = z3.If(is_x, h, other)
        is_x = [x == b for b in range(self.n)]
        for a in range(self.n):  # x becomes the newest index entry (one variable per a < b)
            for b in range(a + 1, self.n):
                e.updates[f"older[{a}][{b}]"] = z3.Or(
                    is_x[b], z3.And(z3.Not(is_x[a]), s.older[a][b])
                )
        e.updates[f"nc[{q}]"] = s.nc[q] + 1
        e.updates[f"last[{q}]"] = s.const(h)
        return e

    def hit(self, q: int, h: int) -> _Effect:
        s = self.s
        chain = self.cfg.chain(h)
        holders = [s.first_holder(c) for c in chain]
        e = _Effect(z3.And(s.len[q] == 0, *[z3.Or(f) for f in holders]))
        touched = [z3.Or([f[b] for f in holders]) for b in range(self.n)]
        self._touch(e, touched)
        for j in range(self.cfg.table_len):
            if j < len(chain):
                e.updates[f"tbl[{q}][{j}]"] = block_id(s, holders[j])
        e.updates[f"len[{q}]"] = s.const(len(chain))
        e.updates[f"nc[{q}]"] = s.const(len(chain))
        e.updates[f"last[{q}]"] = s.const(h)
        return e

    def free(self, q: int) -> _Effect:
        """Free the table reversed: table position j is batch position len-1-j."""
        s, lim = self.s, self.cfg.table_len
        counts = [s.count_in_table(q, b) for b in range(self.n)]
        # A block reaches 0 at its last occurrence in processing order. The call passes
        # the table reversed; forward-free processes that list reversed again.
        forward = self.m == "forward-free"
        order = range(lim - 1, -1, -1) if forward else range(lim)
        position: list[Expr] = []
        for b in range(self.n):
            pos: Expr = s.const(0)
            for j in reversed(list(order)):
                batch_pos = j if forward else (lim - 1 - j)
                pos = z3.If(z3.And(j < s.len[q], s.tbl[q][j] == b), batch_pos, pos)
            position.append(pos)
        e = _Effect(z3.BoolVal(True))
        guard = self._free(e, counts, position)
        e.guard = z3.And(s.len[q] >= 1, guard)
        e.updates[f"len[{q}]"] = s.const(0)
        e.updates[f"nc[{q}]"] = s.const(0)
        e.updates[f"last[{q}]"] = s.const(0)
        return e

    def fork(self, q: int) -> _Effect:
        """``fork_block`` of the table's last block (the one the next token goes into)."""
        return self._fork(q, None)

    def fork_at(self, q: int, j: int) -> _Effect:
        """``fork_block`` of the block at slot ``j`` before the last: a copy there leaves
        the chain discipline (``disc`` turns false)."""
        return self._fork(q, j)

    def _fork(self, q: int, at: int | None) -> _Effect:
        s, cfg = self.s, self.cfg
        slot = s.len[q] - 1 if at is None else s.const(at)
        x = _sel(s.tbl[q], slot)
        rx = s.ref_of(x)
        shared = rx > 1
        copy = shared
        exclusive_copy: Expr = z3.BoolVal(False)
        if self.m == "fork-copies-exclusive":
            # An exclusive block is copied too, then freed: free_blocks([x]) queues it.
            exclusive_copy = z3.And(rx == 1, s.num_free >= 1)
            copy = z3.Or(shared, exclusive_copy)
        held = s.len[q] >= 1 if at is None else s.len[q] - 1 > at
        e = _Effect(z3.And(held, x != 0, rx > 0, z3.Or(rx == 1, s.num_free >= 1)))
        y = self._pop(e, copy)
        decrement = copy if self.m != "fork-without-decrement" else exclusive_copy
        for b in range(1, self.n):
            e.updates[f"ref[{b}]"] = z3.If(
                z3.And(decrement, x == b), s.ref[b] - 1, e.updates[f"ref[{b}]"]
            )
        if self.m == "fork-copies-exclusive":
            freed = [z3.And(exclusive_copy, x == b) for b in range(self.n)]
            for b in range(1, self.n):
                appended = z3.Or(s.hash[b] != 0, z3.BoolVal(not self.prepends))
                e.updates[f"inq[{b}]"] = z3.Or(freed[b], e.updates[f"inq[{b}]"])
                for c in range(self.n):
                    if c == b:
                        continue
                    for (u, v), value in (((b, c), z3.Not(appended)), ((c, b), appended)):
                        key = f"ahead[{u}][{v}]"
                        rest = e.updates.get(key, s.ahead[u][v])
                        e.updates[key] = z3.If(freed[b], value, rest)
        for j in range(cfg.table_len):
            e.updates[f"tbl[{q}][{j}]"] = z3.If(z3.And(copy, slot == j), y, s.tbl[q][j])
        if at is None:
            uncache = z3.And(copy, s.nc[q] == s.len[q])
            e.updates[f"nc[{q}]"] = z3.If(uncache, s.nc[q] - 1, s.nc[q])
            e.updates[f"last[{q}]"] = z3.If(uncache, parent_term(s, s.last[q]), s.last[q])
        else:
            # The cached prefix ends before the copy: its last hash is the chain's
            # ancestor at depth ``at``.
            uncache = z3.And(copy, s.nc[q] > at)
            ancestor: Expr = s.const(0)
            for h in cfg.hashes:
                chain = cfg.chain(h)
                if at and len(chain) > at:
                    ancestor = z3.If(s.last[q] == h, s.const(chain[at - 1]), ancestor)
            e.updates[f"nc[{q}]"] = z3.If(uncache, s.const(at), s.nc[q])
            e.updates[f"last[{q}]"] = z3.If(uncache, ancestor, s.last[q])
            e.updates["disc"] = z3.And(s.disc, z3.Not(copy))
        return e

    def pad(self, q: int) -> _Effect:
        s = self.s
        e = _Effect(s.len[q] < self.cfg.table_len)
        self._touch(e, [z3.BoolVal(b == 0) for b in range(self.n)])
        for b in range(1, self.n):  # touching only the null block changes no other block
            e.updates.pop(f"ref[{b}]", None)
            e.updates.pop(f"inq[{b}]", None)
        self._append_to_table(e, q, s.const(0))
        return e

    def reset(self) -> _Effect:
        s = self.s
        ok: Expr = z3.And([s.ref[b] <= 0 for b in range(1, self.n)])
        if self.m == "reset-while-in-use":
            ok = z3.BoolVal(True)
        e = _Effect(z3.BoolVal(True))
        for b in range(self.n):
            e.updates[f"hash[{b}]"] = z3.If(ok, 0, s.hash[b])
            e.updates[f"idx[{b}]"] = z3.If(ok, 0, s.idx[b])
        return e

    def stray_free(self, block: int) -> _Effect:
        s = self.s
        counts = [s.const(1 if b == block else 0) for b in range(self.n)]
        position = [s.const(0) for _ in range(self.n)]
        e = _Effect(z3.BoolVal(True))
        guard = self._free(e, counts, position)
        e.guard = z3.And(s.slots(block) == 0, guard)
        return e

    def effect(self, op: Op) -> _Effect:
        if op.kind in ("allocate", "allocate2", "free", "free_tail", "fork", "pad"):
            return getattr(self, op.kind)(op.req)
        if op.kind in ("cache", "hit", "fork_at"):
            return getattr(self, op.kind)(op.req, op.arg)
        if op.kind == "reset":
            return self.reset()
        if op.kind == "stray_free":
            return self.stray_free(op.arg)
        raise ValueError(f"encoding: unknown operation kind {op.kind!r}")


def step_values(
    pre: SymState,
    op_var: Expr,
    mutant: str | None = None,
    only: list[int] | None = None,
) -> tuple[Expr, dict[str, Expr]]:
    """(enabled, values): ``enabled`` says the chosen instance may happen from ``pre``;
    ``values`` gives every variable of the post-state (by its tag-free name) as a term
    over ``pre`` and ``op_var`` (defined even when the instance is not enabled, so two
    relations can be compared from one state). A variable no chosen instance changes is
    the pre-state's own variable."""
    ops = all_ops(pre.cfg)
    builder = _Ops(pre, mutant)
    chosen = list(range(len(ops))) if only is None else only
    effects = {i: builder.effect(ops[i]) for i in chosen}
    enabled = z3.Or([z3.And(op_var == i, e.guard) for i, e in effects.items()])
    values: dict[str, Expr] = {}
    pre_vars = dict(pre.variables())
    for name, old in pre_vars.items():
        if name.startswith("before["):
            values[name] = pre_vars[f"ref[{name[7:]}"]
            continue
        value = z3.BoolVal(False) if name.startswith("handed[") else old
        for i, e in effects.items():
            if name in e.updates:
                value = z3.If(op_var == i, e.updates[name], value)
        values[name] = value
    return enabled, values


def step_terms(
    pre: SymState,
    post: SymState,
    op_var: Expr,
    mutant: str | None = None,
    only: list[int] | None = None,
) -> tuple[Expr, list[Expr]]:
    """(enabled, definitions): :func:`step_values`, with ``definitions`` fixing every
    variable of ``post`` to its value."""
    enabled, values = step_values(pre, op_var, mutant, only)
    return enabled, [new == values[name] for name, new in post.variables()]


def frame_split(
    pre: SymState, post: SymState, values: dict[str, Expr]
) -> tuple[list[tuple[Expr, Expr]], list[Expr]]:
    """(pairs, definitions): the variables of ``post`` the step leaves alone, each with
    the pre-state's variable (pairs for ``z3.substitute``), and a definition of each
    other one. A fact of the post-state, substituted, speaks of the pre-state's own
    variables wherever the step changes nothing, so z3 sees those parts are the assumed
    fact; the changed variables keep a name (one term, however often a fact reads it)."""
    pre_vars = dict(pre.variables())
    pairs: list[tuple[Expr, Expr]] = []
    definitions: list[Expr] = []
    for name, var in post.variables():
        if values[name].eq(pre_vars[name]):
            pairs.append((var, pre_vars[name]))
        else:
            definitions.append(var == values[name])
    return pairs, definitions


def transition(
    pre: SymState,
    post: SymState,
    op_var: Expr,
    mutant: str | None = None,
    only: list[int] | None = None,
) -> list[Expr]:
    """Constraints: ``post`` is ``pre`` after operation instance ``op_var``.

    ``only`` restricts the choice to some instances (the honesty check fixes one).
    """
    enabled, definitions = step_terms(pre, post, op_var, mutant, only)
    return [enabled, *definitions]


def observation_differs(
    a: SymState, b: SymState, mutant_a: str | None, mutant_b: str | None
) -> Expr:
    """``a`` and ``b`` look different to a caller: a count, a hash, the queue order, the
    index (which block a lookup returns), a hand-out, a table (what calls returned), or
    the reported usage."""
    n = a.cfg.num_blocks
    diff: list[Expr] = [usage_numerator(a, mutant_a) != usage_numerator(b, mutant_b)]
    for x in range(n):
        diff += [
            a.ref[x] != b.ref[x], a.hash[x] != b.hash[x], a.inq[x] != b.inq[x],
            a.idx[x] != b.idx[x], a.handed[x] != b.handed[x],
            z3.And(a.handed[x], a.before[x] != b.before[x]),
        ]
        for y in range(n):
            if x == y:
                continue
            queued = z3.And(a.inq[x], a.inq[y], b.inq[x], b.inq[y])
            diff.append(z3.And(queued, a.ahead[x][y] != b.ahead[x][y]))
            same_key = z3.And(a.idx[x] != 0, a.idx[x] == a.idx[y], b.idx[x] == b.idx[y])
            diff.append(z3.And(same_key, a.older[x][y] != b.older[x][y]))
    for q in range(a.cfg.num_requests):
        diff += [a.len[q] != b.len[q], a.nc[q] != b.nc[q], a.last[q] != b.last[q]]
        diff += [z3.And(j < a.len[q], a.tbl[q][j] != b.tbl[q][j])
                 for j in range(a.cfg.table_len)]
    return z3.Or(diff)


# --------------------------------------------------------------------------- invariants


def usage_numerator(s: SymState, mutant: str | None) -> Expr:
    """``usage * N * (N-1)``: kept integral so the solver stays in linear integer arithmetic."""
    n = s.cfg.num_blocks
    if mutant == "usage-counts-null":
        return (n - s.num_free) * (n - 1)
    return (n - 1 - s.num_free) * n


def invariant_terms(s: SymState, mutant: str | None = None) -> dict[str, Expr]:
    """Every named invariant of :mod:`kvspec.spec.invariants` and the request invariants, in z3."""
    return _invariant_terms(s, mutant, range(1, s.cfg.num_blocks))


def auxiliary_terms(s: SymState) -> dict[str, Expr]:
    """Candidate strengthening invariants for induction (see docs/prove.md for why each
    is true). They speak of the encoding's bookkeeping (orders, table shape), so
    they are not invariants of :mod:`kvspec.spec.invariants`, only of this model."""
    return _auxiliary_terms(s, range(1, s.cfg.num_blocks))


def focused_terms(s: SymState, mutant: str | None, block: int) -> dict[str, Expr]:
    """Every invariant and auxiliary fact with its "for every non-null block b" part
    said of ``block`` alone (the parts about the null block, counts, tables and orders
    stay whole). The conjunction over blocks 1..N-1 of a focused term is the full term.

    Induction asks of one block what it must show of all (see
    :mod:`kvspec.spec.symbolic.induction`): the relation and every candidate are
    unchanged by renaming blocks 1..N-1, so a step breaking a fact at some block b
    becomes, renamed, one breaking it at ``block``."""
    return {**_invariant_terms(s, mutant, [block]), **_auxiliary_terms(s, [block])}


def symmetric_names(cfg: ModelConfig) -> frozenset[str]:
    """The names :func:`focused_terms` focuses: every name of :func:`invariant_terms` and
    :func:`auxiliary_terms`, each unchanged by renaming blocks 1..N-1 (a test checks this,
    and that the relation is unchanged too)."""
    from dataclasses import replace

    # The names do not depend on the pool's size: ask the smallest pool for them.
    probe = SymState(replace(cfg, num_blocks=2), "names")
    return frozenset(invariant_terms(probe)) | frozenset(auxiliary_terms(probe))


def _invariant_terms(s: SymState, mutant: str | None, blocks: Iterable[int]
                     ) -> dict[str, Expr]:
    cfg = s.cfg
    n = cfg.num_blocks
    non_null = list(blocks)
    out: dict[str, Expr] = {}
    out["ref-nonnegative"] = z3.And([s.ref[b] >= 0 for b in non_null])
    out["free-iff-unreferenced"] = z3.And([s.inq[b] == (s.ref[b] == 0) for b in non_null])
    null = [z3.Not(s.inq[0]), z3.Not(s.handed[0]), s.hash[0] == 0]
    if not cfg.profile.count_null_refs:
        null.append(s.ref[0] == 0)
    out["null-block"] = z3.And(null)
    out["no-double-allocation"] = z3.And([
        z3.Implies(s.handed[b], z3.And(
            s.before[b] == 0, s.hash[b] == 0, *([s.ref[b] == 1] if b else [])
        ))
        for b in [0, *non_null]
    ])
    out["hash-index-consistent"] = z3.And([s.idx[b] == s.hash[b] for b in [0, *non_null]])
    idle = z3.And([s.ref[b] <= 0 for b in range(1, n)])
    usage = usage_numerator(s, mutant)
    out["usage-excludes-null"] = z3.And(
        usage == (n - 1 - s.num_free) * n, z3.Implies(idle, usage == 0)
    )
    # free + used, summed block by block: each block adds 1 if it is in exactly one of
    # the two places, 2 if in both, 0 if in neither. The same number as the two counts
    # added, written so that where every block is in exactly one place each summand is
    # the constant 1, with no counting for the solver to reason about.
    one, two, zero = s.const(1), s.const(2), s.const(0)
    places = [z3.If(s.inq[0], one, zero)] + [
        z3.If(s.inq[b] == (s.ref[b] > 0), z3.If(s.inq[b], two, zero), one)
        for b in range(1, n)
    ]
    out["conservation"] = z3.Sum(places) == n - 1
    order: list[Expr] = []
    for x in [0, *non_null]:
        for h in cfg.hashes:
            p = cfg.parent(h)
            if p == 0:
                continue
            safe = z3.Or([
                z3.And(s.hash[b] == p, z3.Or(s.ref[b] > 0, z3.And(s.inq[b], s.ahead[x][b])))
                for b in range(n)
            ])
            order.append(z3.Implies(z3.And(s.inq[x], s.hash[x] == h), safe))
    # Claimed only while the chain discipline it assumes is kept (spec/invariants.py).
    out["eviction-order"] = z3.Implies(s.disc, z3.And(order))
    out["table-references"] = z3.And([s.ref[b] == s.slots(b) for b in non_null])
    chained: list[Expr] = []
    for q in range(cfg.num_requests):
        chained.append(z3.Implies(s.last[q] == 0, s.nc[q] == 0))
        for h in cfg.hashes:
            chain = cfg.chain(h)
            if len(chain) > cfg.table_len:
                chained.append(s.last[q] != h)
                continue
            body = [s.nc[q] == len(chain)]
            for j, c in enumerate(chain):
                # "the block in slot j is hashed c", said of each block the slot may hold
                # (for table entries, which are block ids, the same as hash[tbl[q][j]])
                body += [s.tbl[q][j] != 0, *[
                    z3.Implies(s.tbl[q][j] == b, s.hash[b] == c) for b in non_null]]
            chained.append(z3.Implies(s.last[q] == h, z3.And(body)))
    out["cached-prefix-chained"] = z3.And(chained)
    return out


def _auxiliary_terms(s: SymState, blocks: Iterable[int]) -> dict[str, Expr]:
    cfg = s.cfg
    non_null = list(blocks)
    n, lim, hmax = cfg.num_blocks, cfg.table_len, cfg.num_hashes
    out: dict[str, Expr] = {}
    shape: list[Expr] = []
    for q in range(cfg.num_requests):
        shape += [s.nc[q] >= 0, s.nc[q] <= s.len[q], s.len[q] <= lim]
        shape += [z3.Implies(j < s.len[q], z3.And(s.tbl[q][j] >= 0, s.tbl[q][j] < n))
                  for j in range(lim)]
    out["table-shape"] = z3.And(shape)
    values: list[Expr] = []
    for b in [0, *non_null]:
        values += [s.hash[b] >= 0, s.hash[b] <= hmax, s.idx[b] >= 0, s.idx[b] <= hmax]
    for q in range(cfg.num_requests):
        values += [s.last[q] >= 0, s.last[q] <= hmax]
    out["values-in-range"] = z3.And(values)
    out["shared-blocks-hashed"] = z3.And([
        z3.Implies(s.ref[b] > 1, s.hash[b] != 0) for b in non_null
    ])
    out["uncached-suffix-unhashed"] = z3.Implies(s.disc, z3.And([
        z3.Implies(z3.And(s.nc[q] <= j, j < s.len[q], s.tbl[q][j] == b), s.hash[b] == 0)
        for q in range(cfg.num_requests) for j in range(lim) for b in [0, *non_null]
    ]))
    return out


AUXILIARY_MEANING: dict[str, str] = {
    "table-shape": "0 <= cached <= length <= L, and table entries are block ids",
    "values-in-range": "hashes, index keys and last hashes lie in 0..H",
    "shared-blocks-hashed": "a block held by two slots is hashed (only prefix hits share)",
    "uncached-suffix-unhashed": (
        "under the chain discipline, blocks past a table's cached prefix carry no hash"),
}
