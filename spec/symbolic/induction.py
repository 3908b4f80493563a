"""Unbounded proofs: an inductive strengthening found by Houdini, then k-induction.

An invariant P holds in every reachable state if some set of facts I containing P is
*inductive*: I holds initially, and one operation from any state satisfying I leads to a
state satisfying I. P alone is rarely inductive (``eviction-order`` after a ``free`` needs
to know the freed table's cached prefix is chained, which needs ``table-references``, ...),
so the candidates are every named invariant plus the auxiliary facts of
:func:`kvspec.spec.symbolic.encoding.auxiliary_terms`.

Houdini finds the largest inductive subset of the candidates: drop every candidate that
is false initially, then repeatedly drop every candidate that one step can break from a
state satisfying all the surviving ones, until nothing more drops. What survives is
proved. A named invariant that was dropped can then be tried by :func:`k_induction`,
strengthened by the survivors, once bounded model checking has covered its base case.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import z3
from kvspec.spec.symbolic import encoding
from kvspec.spec.symbolic.encoding import (
    SymState,
    auxiliary_terms,
    invariant_terms,
    raise_if_interrupted,
)
from kvspec.spec.symbolic.model import ModelConfig, Op, all_ops


@dataclass
class InductionReport:
    """What induction established. ``proved[name]`` names the method; ``dropped[name]``
    says why a candidate did not survive; ``survivors`` is the inductive set found."""

    proved: dict[str, str] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)
    auxiliary_used: list[str] = field(default_factory=list)
    survivors: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    timed_out: bool = False


def _candidates(s: SymState, mutant: str | None) -> dict[str, z3.ExprRef]:
    out = dict(invariant_terms(s, mutant))
    out.update(auxiliary_terms(s))
    return out


DEFAULT_WIDTH = 8


def _solver(width: int | None) -> z3.Solver:
    # QF_FD: bit-blasting into z3's incremental SAT solver, which keeps what it has
    # blasted across push/pop (QF_BV with push/pop falls back to the general SMT core).
    return z3.SolverFor("QF_LIA" if width is None else "QF_FD")


#: The order in which candidates are asked (as in bounded model checking): a candidate
#: shown to survive the step is asserted of the post-state at once, so a later question
#: in the same pass may use it (``conservation`` after ``free-iff-unreferenced``).
def _rank(name: str) -> int:
    from kvspec.spec.symbolic.bmc import CHECK_ORDER

    for key in (name, f"aux:{name}"):
        if key in CHECK_ORDER:
            return CHECK_ORDER.index(key)
    return len(CHECK_ORDER)


def _implied(solver: z3.Solver, fact: z3.ExprRef, deadline: float | None) -> bool:
    """Whether the facts asserted in ``solver`` (of one unconstrained state) imply
    ``fact`` of that state; a time-out answers no (the step questions are then asked,
    and report it), an interrupt is raised."""
    return _check(solver, [z3.Not(fact)], deadline) == z3.unsat


#: The block the questions of a symmetric candidate set are asked about.
FOCUS_BLOCK = 1


def houdini(
    cfg: ModelConfig,
    mutant: str | None = None,
    candidates: list[str] | None = None,
    deadline: float | None = None,
    width: int | None = DEFAULT_WIDTH,
) -> tuple[list[str], dict[str, str], bool]:
    """The largest inductive subset of ``candidates`` (all by default).

    Returns (survivors, {dropped: reason}, timed_out).

    **Block symmetry.** The relation (of the spec and of every mutant) and every
    candidate of the encoding are unchanged when blocks 1..N-1 are renamed (the null
    block stays); ``tests/test_symbolic_induction.py`` checks both with z3. So if one step
    from a state satisfying the survivors breaks a candidate's "for every block b" part
    at some block, renaming that block to block 1 gives a step from a state satisfying the
    survivors that breaks it at block 1. Each question therefore asks only whether the
    candidate can break at block 1 (:func:`~kvspec.spec.symbolic.encoding.focused_terms`),
    with the survivors assumed whole of the pre-state. This is used only when every
    surviving candidate is one the encoding knows to be symmetric; otherwise the full
    candidate is asked.
    """
    s0, s1 = SymState(cfg, "h0", width), SymState(cfg, "h1", width)
    pre = _candidates(s0, mutant)
    # The implication questions are asked of the pre-state's variables in a solver of
    # their own, where nothing constrains them: a free state.
    free_state = pre
    post_terms: dict[str, z3.ExprRef] = {}

    def post(name: str) -> z3.ExprRef:
        """The full candidate of the post-state (built only when a pass needs it)."""
        if not post_terms:
            post_terms.update(_candidates(s1, mutant))
        return post_terms[name]

    focused = encoding.focused_terms(s1, mutant, FOCUS_BLOCK)
    symmetric = encoding.symmetric_names(cfg)
    alive = [n for n in (candidates or list(pre))]
    dropped: dict[str, str] = {}

    init = _solver(width)
    init.add(*encoding.initial(s0))
    for name in list(alive):
        init.push()
        init.add(z3.Not(pre[name]))
        if init.check() != z3.unsat:
            dropped[name] = "false in the initial state"
            alive.remove(name)
        init.pop()

    # One solver per kind of operation: the relation restricted to that kind's instances.
    # Their union is the whole relation, so "no kind can break it" is "no step can"; the
    # split queries are each far easier for z3 than one query over every operation
    # (table-references at N=6: 5 s over eight kinds, 39 s at once).
    ops = all_ops(cfg)
    kinds = sorted({o.kind for o in ops}, key=[o.kind for o in ops].index)
    # The post-state's facts are asked with every variable the kind leaves alone
    # replaced by the pre-state's (encoding.frame_split): their unchanged parts are
    # then the pre-state's own terms, which z3 sees at once are assumed.
    op_var = s0.op_var("op@h")
    steps: list[tuple[list[z3.ExprRef], list[tuple[z3.ExprRef, z3.ExprRef]]]] = []
    # Under the focus, stray_free(b) for a block b other than 0 and the focus block is
    # stray_free(FOCUS_BLOCK + 1) renamed by swapping b and FOCUS_BLOCK + 1, which leaves
    # the focus block alone: one of those instances stands for all of them.
    focus_throughout = set(alive) <= symmetric

    def needed(o: Op) -> bool:
        return not (focus_throughout and o.kind == "stray_free" and o.arg > FOCUS_BLOCK + 1)

    for k in kinds:
        enabled, values = encoding.step_values(
            s0, op_var, mutant,
            only=[i for i, o in enumerate(ops) if o.kind == k and needed(o)])
        pairs, definitions = encoding.frame_split(s0, s1, values)
        steps.append(([enabled, *definitions], pairs))
    # Each pass asserts the survivors as plain facts (faster than assumption literals)
    # and asks, candidate by candidate, whether one step can break it; every candidate
    # that can is dropped, and the pass repeats until none drops. A candidate no step
    # breaks is asserted of the post-state for the rest of the pass: every model of the
    # pass's solvers satisfies it already, so no answer changes, and later questions
    # are easier.
    while alive:
        goal = focused if set(alive) <= symmetric else {n: post(n) for n in alive}
        order = sorted(alive, key=_rank)
        solvers = []
        for relation, _pairs in steps:
            solver = _solver(width)
            solver.add(*relation)
            solver.add(*[pre[n] for n in alive])
            solvers.append(solver)
        # First, one question per kind: can the step break any candidate that the ones
        # before it do not imply? (A candidate the others imply of any state, such as
        # conservation from free-iff-unreferenced, ref-nonnegative and null-block, is
        # kept when they are.) Every answer "no" means nothing drops: the pass is over.
        asked: list[str] = []
        implied = _solver(width)
        for name in order:
            if _implied(implied, free_state[name], deadline):
                continue
            asked.append(name)
            implied.add(free_state[name])
        joint = z3.Not(z3.And([goal[n] for n in asked]))
        verdicts = [_check(solver, [z3.substitute(joint, *pairs)], deadline)
                    for solver, (_relation, pairs) in zip(solvers, steps, strict=True)]
        if z3.unknown in verdicts:
            return alive, dropped, True
        if z3.sat not in verdicts:
            break
        # Something breaks: ask candidate by candidate which. A candidate no step
        # breaks is asserted of the post-state for the rest of the pass (every model of
        # the pass's solvers satisfies it already, so no answer changes, and later
        # questions are easier), and of a free state, to find the candidates it implies.
        failed: list[str] = []
        implied = _solver(width)
        for name in order:
            kept = True
            if not _implied(implied, free_state[name], deadline):
                for solver, (_relation, pairs) in zip(solvers, steps, strict=True):
                    verdict = _check(solver, [z3.Not(z3.substitute(goal[name], *pairs))],
                                     deadline)
                    if verdict == z3.unknown:
                        return alive, dropped, True
                    if verdict == z3.sat:
                        failed.append(name)
                        kept = False
                        break
            if kept:
                for solver, (_relation, pairs) in zip(solvers, steps, strict=True):
                    solver.add(z3.substitute(post(name), *pairs))
                implied.add(free_state[name])
        if not failed:
            break
        for name in failed:
            dropped[name] = "one step can break it from a state satisfying the survivors"
            alive.remove(name)
    return alive, dropped, False


def _check(solver: z3.Solver, query: list[z3.ExprRef], deadline: float | None
           ) -> z3.CheckSatResult:
    """``query`` with what ``solver`` holds, within ``deadline`` (``unknown``: time out;
    an interrupt is raised)."""
    if deadline is not None:
        left = deadline - time.monotonic()
        if left <= 0:
            return z3.unknown
        solver.set("timeout", max(1, int(left * 1000)))
    solver.push()
    solver.add(*query)
    verdict = solver.check()
    solver.pop()
    if verdict == z3.unknown and (deadline is None or time.monotonic() < deadline):
        raise_if_interrupted(solver)
    return verdict


def k_induction(
    cfg: ModelConfig,
    name: str,
    strengthening: list[str],
    k: int,
    mutant: str | None = None,
    deadline: float | None = None,
    width: int | None = DEFAULT_WIDTH,
) -> z3.CheckSatResult:
    """The inductive step of k-induction for ``name``: ``unsat`` means k consecutive
    states satisfying it (and ``strengthening``) force the next one to. The base case
    (no counterexample of length < k) is bounded model checking's job."""
    states = [SymState(cfg, f"k{i}", width) for i in range(k + 1)]
    solver = _solver(width)
    if deadline is not None:
        solver.set("timeout", max(1, int((deadline - time.monotonic()) * 1000)))
    for i, s in enumerate(states):
        terms = _candidates(s, mutant)
        solver.add(*[terms[n] for n in strengthening])
        if i < k:
            solver.add(terms[name])
            solver.add(*encoding.transition(s, states[i + 1], s.op_var(f"op@k{i}"), mutant))
        else:
            solver.add(z3.Not(terms[name]))
    verdict = solver.check()
    if verdict == z3.unknown and (deadline is None or time.monotonic() < deadline):
        raise_if_interrupted(solver)
    return verdict


def prove(
    cfg: ModelConfig,
    names: list[str],
    mutant: str | None = None,
    deadline: float | None = None,
    width: int | None = DEFAULT_WIDTH,
) -> InductionReport:
    """Prove what Houdini can of ``names``; the survivors are in ``report.survivors``."""
    report = InductionReport()
    started = time.monotonic()
    alive, dropped, timed_out = houdini(cfg, mutant, deadline=deadline, width=width)
    elapsed = time.monotonic() - started
    report.dropped = dropped
    report.timed_out = timed_out
    if timed_out:
        return report
    aux = set(auxiliary_terms(SymState(cfg, "aux")))
    report.survivors = list(alive)
    report.auxiliary_used = [n for n in alive if n in aux]
    for name in names:
        if name in alive:
            report.proved[name] = "induction"
            report.seconds[name] = elapsed
    return report


def lemma_names(report: InductionReport) -> list[str]:
    """The survivors as :func:`kvspec.spec.symbolic.bmc.bmc` takes them (``aux:`` prefixed)."""
    aux = set(report.auxiliary_used)
    return [f"aux:{n}" if n in aux else n for n in report.survivors]
