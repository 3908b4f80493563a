"""Bounded model checking with iterative deepening: provably shortest counterexamples.

For k = 0, 1, 2, ... the solver is asked whether some sequence of exactly k operations
from the initial pool reaches a state that breaks an invariant. Because every shorter
length was asked first (and answered "no"), the first k that answers "yes" is the length
of a shortest counterexample. What keeps the deepening cheap:

* lemmas: once a fact cannot break at step k, it is asserted for step k in every later
  query (true of every path, so no path is lost; the solver stops rediscovering it).
  Besides the invariants, the auxiliary facts of the induction proof are checked and
  kept the same way (never reported: they only help).
* with ``push``/``pop``, one query per fact and depth, in an order where each fact just
  proved for step k helps the next (``conservation`` after ``free-iff-unreferenced``);
  one joint query per depth was much slower beyond depth 7 at N = 6.
* symmetry breaking and progress (see :func:`symmetry_breaking` and ``_Unrolling``).

``incremental=True`` keeps one solver and ``push``/``pop``s each query; ``False`` builds a
fresh solver per depth (one joint query, then one per fact only when something breaks).
The benchmark compares the two.

A model is decoded by *re-running its operations on the executable spec* (or the
mutant's twin, :mod:`kvspec.spec.symbolic.twins`): the trace kvspec reports is what the Python
spec did, and if that run does not break the invariant the two models have drifted
apart, which is reported as an error, never as a counterexample.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import z3
from kvspec.spec.symbolic import encoding
from kvspec.spec.symbolic.encoding import (
    SymState,
    auxiliary_terms,
    invariant_terms,
    observation_differs,
    raise_if_interrupted,
    usage_numerator,
)
from kvspec.spec.symbolic.explicit import (
    PoolCall,
    World,
    check_world,
    differences,
    initial_world,
    run_ops,
    step,
)
from kvspec.spec.symbolic.model import ModelConfig, Op, all_ops
from kvspec.spec.symbolic.twins import SPEC, get_mutant, semantics_of


class ModelDrift(RuntimeError):
    """z3 and the executable spec disagree: a bug in kvspec's model checker."""


@dataclass
class Counterexample:
    """A shortest sequence of request operations breaking ``invariant``."""

    invariant: str
    ops: list[Op]
    calls: list[list[PoolCall]]
    violations: list[str]
    #: The executable model's world before the first and after each operation.
    worlds: list[World] = field(default_factory=list)


@dataclass
class Result:
    """The verdict on one invariant. ``status``: ``counterexample``, ``holds`` (to
    ``depth``, no proof) or ``proved`` (all depths; ``method`` says how)."""

    invariant: str
    status: str
    depth: int
    seconds: float
    counterexample: Counterexample | None = None
    method: str = ""
    #: Why a search stopped short of its depth ("" when it reached it).
    stopped: str = ""

    def describe(self) -> str:
        if self.status == "counterexample":
            return f"counterexample of length {self.depth}"
        if self.status == "proved":
            return f"proved {self.method}" if self.method else "proved"
        return f"holds to depth {self.depth}" + (f" ({self.stopped})" if self.stopped else "")


DEFAULT_WIDTH = 8


def all_invariant_names(cfg: ModelConfig) -> list[str]:
    return list(invariant_terms(SymState(cfg, "names")))


def width_for(cfg: ModelConfig, max_depth: int) -> int:
    """Bits for the state's integers: block ids, op ids, ref counts (the classic null
    block's count drifts down by at most one per step), never less than 8."""
    largest = max(cfg.num_blocks, len(all_ops(cfg)), cfg.num_requests * cfg.table_len + 1,
                  max_depth + 1, 2 * cfg.num_hashes)
    return max(DEFAULT_WIDTH, largest.bit_length() + 2)


def symmetry_breaking(cfg: ModelConfig, op_vars: list[z3.ExprRef]) -> list[z3.ExprRef]:
    """Constraints that keep one path of each class of renamings, none of which changes
    a path's length or the invariants it breaks (so shortest lengths are kept):

    * requests are interchangeable: request r+1 acts only after request r has acted;
    * sibling hashes with identical subtrees are interchangeable: the second is cached
      only after the first has been.
    """
    ops = all_ops(cfg)
    pairs: list[tuple[list[int], list[int]]] = []
    for r in range(cfg.num_requests - 1):
        pairs.append(([i for i, o in enumerate(ops) if o.req == r],
                      [i for i, o in enumerate(ops) if o.req == r + 1]))

    def shape(h: int, depth: int) -> tuple:
        if h > cfg.num_hashes or depth > cfg.table_len:
            return ()
        return (shape(2 * h, depth + 1), shape(2 * h + 1, depth + 1))

    # Sibling pairs, shallowest first: swapping two subtrees never disturbs a pair above
    # them or beside them, so a path can be renamed pair by pair into this form.
    for h in cfg.hashes:
        sib = h + 1
        if h % 2 == 0 and sib <= cfg.num_hashes:
            d = cfg.depth(h)
            if d <= cfg.table_len and shape(h, d) == shape(sib, d):
                pairs.append(
                    ([i for i, o in enumerate(ops) if o.kind == "cache" and o.arg == h],
                     [i for i, o in enumerate(ops) if o.kind == "cache" and o.arg == sib]))
    # Grouped by step, so the newest step's constraints are the list's tail.
    out: list[z3.ExprRef] = []
    seen: list[z3.ExprRef] = [z3.BoolVal(False) for _ in pairs]
    for v in op_vars:
        for p, (first, second) in enumerate(pairs):
            out.append(z3.Implies(z3.Or([v == i for i in second]), seen[p]))
            seen[p] = z3.Or(seen[p], *[v == i for i in first])
    return out


@dataclass
class _Unrolling:
    """States s0..sk and the operations between them; constraints added as they grow."""

    cfg: ModelConfig
    mutant: str | None
    width: int | None
    auxiliary: bool
    progress: bool = True
    states: list[SymState] = field(default_factory=list)
    op_vars: list[z3.ExprRef] = field(default_factory=list)
    terms: list[dict[str, z3.ExprRef]] = field(default_factory=list)

    def _terms(self, s: SymState) -> dict[str, z3.ExprRef]:
        out = invariant_terms(s, self.mutant)
        if self.auxiliary:
            out.update({f"aux:{k}": v for k, v in auxiliary_terms(s).items()})
        return out

    def start(self) -> list[z3.ExprRef]:
        s0 = SymState(self.cfg, "0", self.width)
        self.states = [s0]
        self.terms = [self._terms(s0)]
        return encoding.initial(s0)

    def grow(self, symmetry: bool) -> list[z3.ExprRef]:
        k = len(self.states)
        s = SymState(self.cfg, str(k), self.width)
        op = s.op_var(f"op@{k}")
        out = encoding.transition(self.states[-1], s, op, self.mutant)
        self.states.append(s)
        self.op_vars.append(op)
        self.terms.append(self._terms(s))
        if self.progress:
            # A step that changes nothing but the hand-out bookkeeping never shortens a
            # path to a bad state, so paths are made of steps that change the pool or a table.
            before = dict(self.states[-2].variables())
            out.append(z3.Or([
                v != before[n] for n, v in s.variables()
                if not n.startswith(("handed[", "before["))
            ]))
        if symmetry:
            # Recomputed over the whole prefix; only the newest step's terms are new.
            every = symmetry_breaking(self.cfg, self.op_vars)
            out += every[len(every) - _per_step(self.cfg):]
        return out


def _per_step(cfg: ModelConfig) -> int:
    """How many symmetry-breaking constraints one step adds."""
    probe = [z3.Int(f"probe{i}") for i in range(2)]
    return len(symmetry_breaking(cfg, probe)) // 2


def _solver(deadline: float | None) -> z3.Solver:
    s = z3.SolverFor("QF_BV")
    if deadline is not None:
        s.set("timeout", max(1, int((deadline - time.monotonic()) * 1000)))
    return s


def decode(
    cfg: ModelConfig, mutant: str | None, invariant: str, model: z3.ModelRef,
    op_vars: list[z3.ExprRef],
) -> Counterexample:
    """Read the operations out of ``model`` and re-run them on the executable model."""
    ops_table = all_ops(cfg)
    ops = [ops_table[_as_int(model.eval(v, model_completion=True))] for v in op_vars]
    sem = semantics_of(get_mutant(mutant))
    try:
        worlds, calls = run_ops(cfg, ops, sem)
    except RuntimeError as exc:
        raise ModelDrift(f"z3 found {[o.describe() for o in ops]}, but {exc}") from None
    broken = check_world(cfg, worlds[-1], sem, [invariant])
    if invariant not in broken:
        raise ModelDrift(
            f"z3 says {[o.describe() for o in ops]} breaks {invariant}, but the executable "
            "model's final state satisfies it"
        )
    return Counterexample(invariant, ops, calls, broken[invariant], worlds)


def _as_int(v: z3.ExprRef) -> int:
    if z3.is_bv_value(v):
        return v.as_signed_long()
    return v.as_long()


def bmc(
    cfg: ModelConfig,
    mutant: str | None = None,
    names: list[str] | None = None,
    max_depth: int = 8,
    *,
    incremental: bool = True,
    auxiliary: bool = True,
    symmetry: bool = True,
    width: int | None = 0,
    assume: list[str] = (),  # type: ignore[assignment]
    stop_at_first: bool = False,
    deadline: float | None = None,
    on_depth: Callable[[int, float], None] | None = None,
) -> dict[str, Result]:
    """Iterative deepening to ``max_depth``: a shortest counterexample per invariant, or
    "holds to depth k" (k = the deepest depth fully checked before ``deadline``).

    ``auxiliary``: also check the auxiliary facts of :func:`auxiliary_terms` at each
    depth and keep those that hold as lemmas (never reported; they only help the solver).
    ``width``: bits per integer (0: :func:`width_for`; ``None``: unbounded integers).
    ``assume``: invariants and auxiliary facts (``aux:NAME``) already *proved* for this
    model and mutant (by induction); asserted in every state, they prune the search.
    ``stop_at_first``: stop at the first depth where some invariant breaks (the others
    are then reported as holding to that depth).
    """
    get_mutant(mutant)  # a clear error for an unknown name
    names = list(names or all_invariant_names(cfg))
    unknown = set(names) - set(all_invariant_names(cfg))
    if unknown:
        raise ValueError(f"unknown invariant(s) {sorted(unknown)}")
    if width == 0:
        width = width_for(cfg, max_depth)
    started = time.monotonic()
    results: dict[str, Result] = {}
    open_names = list(names)
    unroll = _Unrolling(cfg, mutant, width, auxiliary or any(a.startswith("aux:") for a in assume))
    base = unroll.start()
    base += [unroll.terms[0][a] for a in assume]
    lemma_names = [n for n in unroll.terms[0] if n.startswith("aux:") and n not in assume]
    if not auxiliary:
        lemma_names = []
    background: list[z3.ExprRef] = list(base)  # transitions and lemmas so far
    solver = _solver(deadline)
    if incremental:
        solver.add(*base)
    checked = -1
    for k in range(max_depth + 1):
        if k > 0:
            step = unroll.grow(symmetry)
            step += [unroll.terms[k][a] for a in assume]
            background += step
            if incremental:
                solver.add(*step)
        if deadline is not None and time.monotonic() >= deadline:
            break
        terms = unroll.terms[k]
        asked = sorted(open_names + lemma_names, key=_check_rank)
        broken: list[str] = []
        verdict = z3.sat
        if not incremental:
            # A fresh solver per query is costly: ask once whether anything breaks.
            verdict, _ = _ask(solver, background, incremental, deadline,
                              z3.Or([z3.Not(terms[n]) for n in asked]))
        if verdict == z3.sat:
            for name in asked:
                v, model = _ask(solver, background, incremental, deadline,
                                z3.Not(terms[name]), want_model=name in open_names)
                if v == z3.unknown:
                    verdict = z3.unknown
                    break
                if v == z3.sat:
                    broken.append(name)
                    if name in open_names:
                        cex = decode(cfg, mutant, name, model, unroll.op_vars)
                        results[name] = Result(name, "counterexample", k,
                                               time.monotonic() - started, cex)
                elif incremental:
                    # Proved for step k: later questions about step k may use it.
                    solver.add(terms[name])
        if verdict == z3.unknown:
            break
        open_names = [n for n in open_names if n not in broken]
        lemma_names = [n for n in lemma_names if n not in broken]
        background += [terms[n] for n in open_names + lemma_names]
        checked = k
        if on_depth is not None:
            on_depth(k, time.monotonic() - started)
        if not open_names or (stop_at_first and any(n in names for n in broken)):
            break
    stopped = ""
    if checked < max_depth:
        first_break = stop_at_first and any(r.status == "counterexample" for r in results.values())
        stopped = ("search stopped where another invariant broke" if first_break
                   else "time limit reached")
    for name in open_names:
        results[name] = Result(name, "holds", checked, time.monotonic() - started,
                               stopped=stopped)
    return {n: results[n] for n in names}


#: The order in which facts about one step are asked: each proved fact is asserted at
#: once, so a later question about the same step may use it (``conservation`` follows
#: from ``free-iff-unreferenced`` and ``ref-nonnegative``, ...).
CHECK_ORDER = (
    "aux:table-shape", "aux:values-in-range",
    "null-block", "hash-index-consistent", "ref-nonnegative", "free-iff-unreferenced",
    "table-references", "aux:shared-blocks-hashed", "aux:uncached-suffix-unhashed",
    "conservation", "usage-excludes-null", "no-double-allocation", "cached-prefix-chained",
    "eviction-order",
)


def _check_rank(name: str) -> int:
    return CHECK_ORDER.index(name) if name in CHECK_ORDER else len(CHECK_ORDER)


def _ask(
    solver: z3.Solver,
    background: list[z3.ExprRef],
    incremental: bool,
    deadline: float | None,
    query: z3.ExprRef,
    want_model: bool = False,
) -> tuple[z3.CheckSatResult, z3.ModelRef | None]:
    """Is ``query`` satisfiable with everything asserted so far? (And a model, if asked.)"""
    if deadline is not None and time.monotonic() >= deadline:
        return z3.unknown, None
    if incremental:
        if deadline is not None:
            solver.set("timeout", max(1, int((deadline - time.monotonic()) * 1000)))
        solver.push()
        solver.add(query)
        verdict = solver.check()
        if verdict == z3.unknown:
            solver.pop()
            if deadline is None or time.monotonic() < deadline:
                raise_if_interrupted(solver)
            return verdict, None
        model = solver.model() if verdict == z3.sat and want_model else None
        solver.pop()
        return verdict, model
    fresh = _solver(deadline)
    fresh.add(*background)
    fresh.add(query)
    verdict = fresh.check()
    if verdict == z3.unknown and (deadline is None or time.monotonic() < deadline):
        raise_if_interrupted(fresh)
    return verdict, (fresh.model() if verdict == z3.sat and want_model else None)


#: The pseudo-invariant a divergence counterexample is filed under.
DIVERGENCE = "differs-from-spec"


def divergence(
    cfg: ModelConfig,
    mutant: str,
    max_depth: int = 8,
    *,
    symmetry: bool = True,
    width: int | None = 0,
    assume: list[str] = (),  # type: ignore[assignment]
    deadline: float | None = None,
) -> Result:
    """The fewest operations after which a caller can tell ``mutant`` from the spec.

    Some bugs break no invariant (a copy handed out where none was due, another queue
    order) and are only seen by comparing with the spec, as ``kvspec replay`` does. Here
    k-1 operations run on the spec; the k-th runs from the same state on both relations,
    and the question is whether one admits it and the other not, or the outcomes differ
    in anything a caller observes. ``assume``: facts proved of the *spec*, asserted on the
    spec's states.
    """
    get_mutant(mutant)
    if width == 0:
        width = width_for(cfg, max_depth)
    started = time.monotonic()
    unroll = _Unrolling(cfg, None, width, any(a.startswith("aux:") for a in assume))
    solver = _solver(deadline)
    solver.add(*unroll.start())
    solver.add(*[unroll.terms[0][a] for a in assume])
    s0 = unroll.states[0]
    checked = -1
    for k in range(max_depth + 1):
        if deadline is not None and time.monotonic() >= deadline:
            break
        if k == 0:
            query = [usage_numerator(s0, None) != usage_numerator(s0, mutant)]
            op_vars: list[z3.ExprRef] = []
        else:
            pre = unroll.states[-1]
            spec_post = SymState(cfg, f"{k}spec", width)
            mutant_post = SymState(cfg, f"{k}mut", width)
            op = pre.op_var(f"op@{k}last")
            ok_spec, defs_spec = encoding.step_terms(pre, spec_post, op, None)
            ok_mutant, defs_mutant = encoding.step_terms(pre, mutant_post, op, mutant)
            op_vars = [*unroll.op_vars, op]
            query = [*defs_spec, *defs_mutant, z3.Or(
                ok_spec != ok_mutant,
                z3.And(ok_spec, observation_differs(spec_post, mutant_post, None, mutant)),
            )]
            if symmetry:
                query += symmetry_breaking(cfg, op_vars)
        verdict, model = _ask(solver, [], True, deadline, z3.And(query), want_model=True)
        if verdict == z3.unknown:
            break
        if verdict == z3.sat:
            cex = _decode_divergence(cfg, mutant, model, op_vars)
            return Result(DIVERGENCE, "counterexample", k, time.monotonic() - started, cex)
        checked = k
        if 0 < k < max_depth:
            solver.add(*unroll.grow(symmetry))
            solver.add(*[unroll.terms[-1][a] for a in assume])
    return Result(DIVERGENCE, "holds", checked, time.monotonic() - started,
                  stopped="" if checked == max_depth else "time limit reached")


def _decode_divergence(
    cfg: ModelConfig, mutant: str, model: z3.ModelRef, op_vars: list[z3.ExprRef]
) -> Counterexample:
    ops_table = all_ops(cfg)
    ops = [ops_table[_as_int(model.eval(v, model_completion=True))] for v in op_vars]
    sem = semantics_of(get_mutant(mutant))
    shown = [o.describe() for o in ops]
    if not ops:
        w = initial_world(cfg)
        found = differences(w, w, SPEC, sem)
        if not found:
            raise ModelDrift("z3 says the initial observations differ; they do not")
        return Counterexample(DIVERGENCE, [], [], [f"initially: {found[0]}"], [w])
    try:
        worlds, calls = run_ops(cfg, ops[:-1], SPEC)
    except RuntimeError as exc:
        raise ModelDrift(f"z3 found {shown}, but {exc}") from None
    a = step(cfg, worlds[-1], ops[-1], SPEC)
    b = step(cfg, worlds[-1], ops[-1], sem)
    last = ops[-1].describe()
    if a is None and b is None:
        raise ModelDrift(f"z3 says {shown} tells {mutant} from the spec; both refuse {last}")
    if a is None or b is None:
        refuser, actor = ("the spec", mutant) if a is None else (mutant, "the spec")
        found = [f"{refuser} refuses {last}, {actor} carries it out"]
    else:
        found = [f"after {last}: {d} (spec vs {mutant})"
                 for d in differences(a.world, b.world, SPEC, sem)]
        if not found:
            raise ModelDrift(f"z3 says {shown} tells {mutant} from the spec; it does not")
    final = b or a
    assert final is not None
    return Counterexample(DIVERGENCE, ops, [*calls, final.calls], found,
                          [*worlds, final.world])
