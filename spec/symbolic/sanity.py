"""Checks that run before any proof: the model is not vacuous, and it says what the spec says.

A proof by induction is only worth what the model it speaks of is worth. Two ways it can
be worthless, and the checks that rule each out before ``kvspec prove`` says "proved":

* **vacuity**: if the initial state, the transition relation or one operation's guard
  is a contradiction, every claim about the reachable states holds, since there are
  none (or none that use that operation). So: the initial state must be satisfiable and
  be exactly the spec's fresh pool (``initial-state``); every operation must be admitted
  by z3 from some state the spec reaches, and the depth at which each first fires is
  reported (``operations-enabled``); the strengthening an induction proof found must
  hold on every state checked (``strengthening-holds``), so it is not a set of facts
  that only an impossible state satisfies.
* **drift**: the z3 relation is written beside the executable spec, not derived from it.
  So the spec's own functions (:mod:`kvspec.spec.pool`, or a mutant's twins) are run over
  a breadth-first exploration of request operations, and for every explored world and
  every operation, z3's relation with the pre-state fixed to that world must admit
  exactly the spec's post-state (every observable variable, and the usage the spec's
  ``get_usage`` reports), and nothing when the spec refuses (``cross-check``).

Since z3's initial state is the spec's, and z3 admits exactly the spec's step from every
checked world, the states z3 reaches within the fully checked depth are the spec's.

Evaluation is by substitution: the relation is built once over a symbolic pre-state and
operation; a world and an operation are substituted in and z3 simplifies what is left
to one value per post-state variable (the relation is functional), or to ``False``.
That is about 40 times faster than a solver call per pair; when the simplified form is
not of that shape, a solver decides.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import z3
from kvspec.spec.symbolic import encoding
from kvspec.spec.symbolic.concrete import admits_exactly, observably_equal, world_values
from kvspec.spec.symbolic.encoding import (
    SymState,
    auxiliary_terms,
    invariant_terms,
    usage_numerator,
)
from kvspec.spec.symbolic.explicit import StepResult, World, initial_world, step
from kvspec.spec.symbolic.model import OP_MEANING, ModelConfig, Op, all_ops
from kvspec.spec.symbolic.twins import PoolSemantics, get_mutant, semantics_of

#: The named checks, in the order they run.
CHECKS: dict[str, str] = {
    "initial-state": "z3's initial state is satisfiable and is exactly the spec's fresh pool",
    "cross-check": "from each explored world, z3 admits exactly the spec's post-state of "
                   "each operation (usage included), and nothing when the spec refuses",
    "operations-enabled": "every operation is admitted by z3 from some state the spec reaches",
    "strengthening-holds": "the facts an induction proof uses hold on every checked world",
}

#: The paths through the operations, as the spec takes them; the depth at which each
#: first fires is reported. A path never reached within the bound is listed, not failed
#: (some need more steps than a small bound allows at a large pool).
PATHS: dict[str, str] = {
    "allocate": "get_new_blocks(1) pops an unhashed block",
    "allocate-evicting": "get_new_blocks(1) pops a cached block and evicts its hash",
    "allocate-two": "get_new_blocks(2) pops the two blocks nearest the front",
    "free-tail": "free_blocks of a table's last block",
    "cache": "cache_block under a hash no block holds",
    "cache-duplicate": "cache_block under a hash another block already holds",
    "hit-held": "a hit on blocks other requests hold",
    "hit-reviving": "a hit on a free cached block: touch takes it out of the queue",
    "free-queuing": "free_blocks queues blocks that reach 0",
    "free-shared": "free_blocks of blocks still held elsewhere: nothing is queued",
    "fork-exclusive": "fork_block of a block held once: the same block back",
    "fork-copy": "fork_block of a shared block: a new block replaces it",
    "fork-middle-exclusive": "fork_block of a block held once, before a table's last slot",
    "fork-middle-copy": "fork_block of a shared block before a table's last slot: the "
                        "sequence leaves the chain discipline",
    "pad": "touch of the null block",
    "reset": "reset_prefix_cache drops every hash",
    "reset-refused": "reset_prefix_cache refused while a block is held",
    "stray-free": "free_blocks of a block no table holds",
}


def path_of(w: World, op: Op, res: StepResult) -> str:
    """Which path of ``op`` the spec took from ``w``."""
    after = res.world
    if op.kind == "allocate":
        (b, _before), = after.allocated
        return "allocate-evicting" if w.pool.block_hash[b] is not None else "allocate"
    if op.kind == "cache":
        _name, args = res.calls[-1]
        return "cache-duplicate" if args["block_hash"] in w.pool.cached else "cache"
    if op.kind == "hit":
        held = all(w.pool.ref_cnt[b] > 0 for b in after.tables[op.req])
        return "hit-held" if held else "hit-reviving"
    if op.kind == "free":
        queued = set(after.pool.free_queue) - set(w.pool.free_queue)
        return "free-queuing" if queued else "free-shared"
    if op.kind == "fork":
        copied = after.tables[op.req][-1] != w.tables[op.req][-1]
        return "fork-copy" if copied else "fork-exclusive"
    if op.kind == "fork_at":
        copied = after.tables[op.req][op.arg] != w.tables[op.req][op.arg]
        return "fork-middle-copy" if copied else "fork-middle-exclusive"
    if op.kind == "reset":
        held = any(w.pool.ref_cnt[b] > 0 for b in range(1, w.pool.num_blocks))
        return "reset-refused" if held else "reset"
    if op.kind == "stray_free":
        return "stray-free"
    if op.kind == "allocate2":
        return "allocate-two"
    if op.kind == "free_tail":
        return "free-tail"
    return op.kind


#: The operation kind each path belongs to.
PATH_KIND: dict[str, str] = {
    p: ("allocate2" if p == "allocate-two" else "free_tail" if p == "free-tail"
        else "stray_free" if p == "stray-free" else "fork_at" if p.startswith("fork-middle")
        else p.split("-")[0])
    for p in PATHS
}


@dataclass
class SanityReport:
    """What the checks found. ``failures``: one sentence per failed check, each starting
    with the check's name; empty when every check passed."""

    failures: list[str] = field(default_factory=list)
    #: path -> the depth of the world from which z3 and the spec first took it
    fired: dict[str, int] = field(default_factory=dict)
    worlds: list[World] = field(default_factory=list)
    pairs: int = 0
    complete_depth: int = -1
    deepest: int = 0
    explored: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failures

    #: the operation kinds of the instance (a path of another kind cannot fire)
    kinds: set[str] = field(default_factory=set)

    def unreached(self) -> list[str]:
        return [p for p in PATHS if p not in self.fired and PATH_KIND[p] in self.kinds]

    def describe(self) -> list[str]:
        """Lines for ``kvspec prove``'s header."""
        fired = ", ".join(f"{p}@{d}" for p, d in sorted(self.fired.items(), key=lambda x: x[1]))
        out = [
            f"cross-checked against the spec: {len(self.worlds)} worlds x every operation "
            f"({self.pairs} pairs): every world to depth {self.complete_depth}, and the first "
            f"world of each path (deepest at depth {self.deepest}); {self.seconds:.1f} s",
            f"operations first admitted at depth: {fired}",
        ]
        if self.unreached():
            out.append("paths not reached within the bound (not cross-checked): "
                       + ", ".join(self.unreached()))
        return out


# A post-state variable as z3 prints it: ``|ref[1]@post|``, or bare when the name needs
# no quoting (``disc@post``).
_NAME = r"\|?([^|@\s()]+)@post\|?"
_EQ = re.compile(r"\(= " + _NAME + r" (#x[0-9a-f]+|#b[01]+|\d+|\(- \d+\))\)")
_NOT = re.compile(r"\(not " + _NAME + r"\)")
_BARE = re.compile(_NAME)


def _number(raw: str) -> int:
    """An SMT-LIB numeral: ``#x..``/``#b..`` (two's complement), ``7`` or ``(- 7)``."""
    if raw.startswith(("#x", "#b")):
        base, per = (16, 4) if raw[1] == "x" else (2, 1)
        v, bits = int(raw[2:], base), per * (len(raw) - 2)
        return v - (1 << bits) if v >> (bits - 1) else v
    if raw.startswith("(-"):
        return -int(raw[2:-1])
    return int(raw)


def _value(v: z3.ExprRef) -> int | bool | None:
    if z3.is_true(v):
        return True
    if z3.is_false(v):
        return False
    if z3.is_bv_value(v):
        return v.as_signed_long()
    if z3.is_int_value(v):
        return v.as_long()
    return None


class Evaluator:
    """z3's transition relation, evaluated on concrete worlds by substitution."""

    def __init__(self, cfg: ModelConfig, mutant: str | None, width: int | None = 8) -> None:
        self.cfg = cfg
        self.mutant = mutant
        self.width = width
        self.pre = SymState(cfg, "pre", width)
        self.post = SymState(cfg, "post", width)
        self.op = self.pre.op_var("op")
        self.relation = z3.And(encoding.transition(self.pre, self.post, self.op, mutant))
        self.pre_vars = dict(self.pre.variables())
        self.names = {name for name, _v in self.post.variables()}
        self.usage = usage_numerator(self.post, mutant)

    def _const(self, var: z3.ExprRef, value: int | bool) -> z3.ExprRef:
        if isinstance(value, bool):
            return z3.BoolVal(value)
        return self.pre.const(value)

    def substitution(self, w: World) -> list[tuple[z3.ExprRef, z3.ExprRef]]:
        values, _seen = world_values(self.cfg, w)
        return [(v, self._const(v, values[name])) for name, v in self.pre_vars.items()]

    def post_values(self, part: z3.ExprRef, op_index: int) -> dict[str, int | bool] | str | None:
        """The post-state z3 admits for ``op_index`` (``part``: the relation with the
        pre-state substituted): ``None`` when it admits none, a dict of values when it
        admits exactly one, a sentence when it admits several, ``"shape"`` when the
        simplified relation is not a conjunction of assignments (a solver decides)."""
        full = z3.simplify(z3.substitute(part, (self.op, self.pre.const(op_index))))
        if z3.is_false(full):
            return None
        count = full.num_args() if z3.is_and(full) else 0 if z3.is_true(full) else 1
        # z3's own printer, parsed here: walking the terms through the Python API took
        # ten times as long.
        text = full.sexpr()
        values: dict[str, int | bool] = {}
        for name, raw in _EQ.findall(text):
            values[name] = _number(raw)
        text = _EQ.sub("", text)
        for name in _NOT.findall(text):
            values[name] = False
        text = _NOT.sub("", text)
        for name in _BARE.findall(text):
            values[name] = True
        if len(values) != count or not set(values) <= self.names:
            return "shape"
        missing = sorted(self.names - set(values))
        if missing:
            return f"z3 admits several post-states ({', '.join(missing[:4])} unconstrained)"
        return values

    def usage_of(self, values: dict[str, int | bool]) -> int | None:
        subs = [(v, z3.BoolVal(bool(values[f"inq[{b}]"]))) for b, v in enumerate(self.post.inq)]
        return _value(z3.simplify(z3.substitute(self.usage, *subs)))  # type: ignore[return-value]

    def compare(self, w: World, part: z3.ExprRef, op_index: int,
                expected: StepResult | None, sem: PoolSemantics) -> str | None:
        """``None`` when z3 admits exactly the spec's outcome of ``op_index`` from ``w``;
        else which side does what."""
        op = all_ops(self.cfg)[op_index]
        got = self.post_values(part, op_index)
        if got == "shape":
            return admits_exactly(self.cfg, w, op_index, self.mutant, self.width)
        if isinstance(got, str):
            return f"{op.describe()}: {got}"
        if expected is None:
            return None if got is None else (
                f"{op.describe()}: the spec refuses it, z3 admits a post-state")
        if got is None:
            return f"{op.describe()}: the spec carries it out, z3 admits no post-state"
        want, observable = world_values(self.cfg, expected.world)
        differ = [f"{n}: spec {want[n]}, z3 {got[n]}" for n in sorted(observable)
                  if got[n] != want[n]]
        if differ:
            shown = "; ".join(differ[:4])
            return f"{op.describe()}: z3's post-state differs from the spec's ({shown})"
        n = self.cfg.num_blocks
        spec_usage = sem.get_usage(expected.world.pool)
        z3_usage = self.usage_of(got)
        if z3_usage is None or abs(z3_usage / (n * (n - 1)) - spec_usage) > 1e-9:
            shown = "?" if z3_usage is None else f"{z3_usage}/{n * (n - 1)}"
            return (f"{op.describe()}: the spec's get_usage reports {spec_usage!r}, z3's usage "
                    f"term {shown}")
        return None


def _explore(cfg: ModelConfig, sem: PoolSemantics, max_depth: int, max_explore: int,
             enough: int) -> tuple[list[tuple[World, list[Op]]], dict[str, tuple[int, int]], int]:
    """Breadth-first over the spec's worlds: (world, the operations reaching it) in BFS
    order, and for each path the index of the first world it fires from and its depth."""
    first = initial_world(cfg)
    order: list[tuple[World, list[Op]]] = [(first, [])]
    seen = {first.key()}
    witnesses: dict[str, tuple[int, int]] = {}
    frontier = [0]
    complete = -1
    ops = all_ops(cfg)
    for depth in range(max_depth + 1):
        nxt: list[int] = []
        for i in frontier:
            w, path = order[i]
            for op in ops:
                res = step(cfg, w, op, sem)
                if res is None:
                    continue
                witnesses.setdefault(path_of(w, op, res), (i, depth))
                k = res.world.key()
                if k not in seen and depth < max_depth and len(order) < max_explore:
                    seen.add(k)
                    order.append((res.world, [*path, op]))
                    nxt.append(len(order) - 1)
        if len(order) < max_explore:
            complete = depth
        frontier = nxt
        possible = {p for p in PATHS if PATH_KIND[p] in {o.kind for o in ops}}
        if not frontier or (possible <= set(witnesses) and len(order) >= enough):
            break
    return order, witnesses, complete


def sanity_check(
    cfg: ModelConfig,
    mutant: str | None = None,
    *,
    max_depth: int = 6,
    max_worlds: int = 60,
    max_explore: int = 20000,
    width: int | None = 8,
    on_world: Callable[[int], None] | None = None,
) -> SanityReport:
    """The ``initial-state``, ``cross-check`` and ``operations-enabled`` checks.

    The spec (or the mutant's twin) is explored breadth first to ``max_depth`` (at most
    ``max_explore`` worlds). The first ``max_worlds`` worlds in that order, plus the first
    world from which each path fires, are cross-checked with every operation.
    """
    started = time.monotonic()
    sem = semantics_of(get_mutant(mutant))
    report = SanityReport()
    ev = Evaluator(cfg, mutant, width)

    w0 = initial_world(cfg)
    solver = z3.SolverFor("QF_BV" if width else "QF_LIA")
    init = encoding.initial(ev.pre)
    solver.add(*init)
    if solver.check() != z3.sat:
        report.failures.append(
            "initial-state: z3's initial state is unsatisfiable, so every invariant would "
            "hold vacuously")
        report.seconds = time.monotonic() - started
        return report
    solver.add(z3.Not(observably_equal(ev.pre, w0)))
    if solver.check() != z3.unsat:
        report.failures.append(
            "initial-state: z3's initial state admits a pool the spec's init_pool does not build")

    order, witnesses, complete = _explore(cfg, sem, max_depth, max_explore, max_worlds)
    report.explored = len(order)
    picked = list(range(min(max_worlds, len(order))))
    chosen = set(picked)
    for i, _d in sorted(witnesses.values()):
        if i not in chosen:
            chosen.add(i)
            picked.append(i)
    depth_of = {i: len(order[i][1]) for i in picked}
    report.complete_depth = max(
        (d for d in range(complete + 1)
         if all(i in chosen for i, (_w, p) in enumerate(order) if len(p) <= d)),
        default=-1,
    )
    ops = all_ops(cfg)
    for count, i in enumerate(picked):
        w, path = order[i]
        part = z3.simplify(z3.substitute(ev.relation, *ev.substitution(w)))
        for op_index, op in enumerate(ops):
            expected = step(cfg, w, op, sem)
            report.pairs += 1
            problem = ev.compare(w, part, op_index, expected, sem)
            if problem is not None:
                where = "; ".join(o.describe() for o in path) or "the initial state"
                report.failures.append(
                    f"cross-check: model drift after [{where}]: {problem}")
                continue
            if expected is not None:
                name = path_of(w, op, expected)
                if depth_of[i] < report.fired.get(name, depth_of[i] + 1):
                    report.fired[name] = depth_of[i]
        report.worlds.append(w)
        report.deepest = max(report.deepest, depth_of[i])
        if on_world is not None:
            on_world(count)
        if len(report.failures) >= 5:
            break
    report.kinds = {op.kind for op in ops}
    for kind in sorted(report.kinds, key=list(OP_MEANING).index):
        if not any(PATH_KIND[p] == kind for p in report.fired):
            report.failures.append(
                f"operations-enabled: z3 never admits {kind} from a world the spec reaches "
                f"within depth {max_depth}: its guard is a contradiction there")
    report.seconds = time.monotonic() - started
    return report


def strengthening_failures(
    cfg: ModelConfig, worlds: list[World], names: list[str], mutant: str | None = None,
    width: int | None = 8,
) -> list[str]:
    """``strengthening-holds``: each of ``names`` (invariants and auxiliary facts) is true
    of every world in ``worlds``; one sentence per fact that is not."""
    ev = _plain_evaluator(cfg, width)
    terms = {**invariant_terms(ev.pre, mutant), **auxiliary_terms(ev.pre)}
    wanted = {n: terms[n] for n in names}
    out: list[str] = []
    for w in worlds:
        for name in ev.holds(w, wanted):
            out.append(f"strengthening-holds: {name}, used by the induction proof, is false "
                       f"on a world the spec reaches (tables {list(w.tables)})")
            wanted.pop(name)
    return out


class _Pre:
    def __init__(self, cfg: ModelConfig, width: int | None) -> None:
        self.pre = SymState(cfg, "pre", width)
        self.cfg = cfg
        self.pre_vars = dict(self.pre.variables())

    def holds(self, w: World, terms: dict[str, z3.ExprRef]) -> list[str]:
        values, _ = world_values(self.cfg, w)
        subs = [(v, z3.BoolVal(values[n]) if isinstance(values[n], bool)
                 else self.pre.const(values[n])) for n, v in self.pre_vars.items()]
        return [name for name, t in terms.items()
                if not z3.is_true(z3.simplify(z3.substitute(t, *subs)))]


def _plain_evaluator(cfg: ModelConfig, width: int | None) -> _Pre:
    return _Pre(cfg, width)
