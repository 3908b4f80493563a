"""The request level in z3: an abstraction of :mod:`kvspec.spec.symbolic.manager_model`.

Neither ``hit-cap`` nor ``table-covers-computed`` depends on *which* blocks a request
gets, only on how many are free and which hashes a lookup finds. So a state is:

``free``            the free count (the free queue's length);
``cached[i]``       a lookup of the stream's hash ``i`` finds a block (``i = 1..T//B``);
``n[r]``, ``c[r]``  request r's tokens (0: no request) and computed tokens;
``tl[r]``, ``ncb[r]`` its table length and ``num_cached_block``;
``hr``, ``hk``, ``hn`` the lookup the last step made: request (-1: none), hit blocks, tokens.

What the abstraction does not know it leaves open, with a *choice* variable per step:
how many of the hits sit in the free queue (each costs a free block), which hashes the
blocks popped for a request lose, how many blocks a free returns to the queue. So every
step the spec takes is admitted (the cross-check tests exactly that, on every explored
world), and the relation may admit more. Hence:

* a proof by induction here holds for the spec too (the spec's runs are among the
  model's), for this instance;
* a counterexample is a sequence of operations that the executable spec (or the
  mutant) is then made to run: if it does not break the invariant there, that is
  reported as an abstraction gap, never as a counterexample. A confirmed one is
  shortest for the spec too: the spec has no shorter one, since each of its runs is one
  of the model's, and bounded model checking refuted every shorter length first.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import z3
from kvspec.spec import pool as sp
from kvspec.spec.request import Request
from kvspec.spec.symbolic.encoding import raise_if_interrupted
from kvspec.spec.symbolic.manager_model import (
    INVARIANTS,
    TOKEN,
    ManagerModelConfig,
    MOp,
    MWorld,
    all_ops,
    broken,
    explore,
    rid,
    run_ops,
    semantics,
    step,
)

WIDTH = 8


def _bv(v: int) -> z3.ExprRef:
    return z3.BitVecVal(v, WIDTH)


class MState:
    """The variables of one abstract state."""

    def __init__(self, cfg: ManagerModelConfig, tag: str) -> None:
        self.cfg = cfg

        def bv(name: str) -> z3.ExprRef:
            return z3.BitVec(f"{name}@{tag}", WIDTH)

        self.free = bv("free")
        self.cached = {i: z3.Bool(f"cached[{i}]@{tag}") for i in range(1, cfg.num_hashes + 1)}
        rs = range(cfg.num_requests)
        self.n = [bv(f"n[{r}]") for r in rs]
        self.c = [bv(f"c[{r}]") for r in rs]
        self.tl = [bv(f"tl[{r}]") for r in rs]
        self.ncb = [bv(f"ncb[{r}]") for r in rs]
        self.hr, self.hk, self.hn = bv("hr"), bv("hk"), bv("hn")

    def variables(self) -> list[tuple[str, z3.ExprRef]]:
        out = [("free", self.free)] + [(f"cached[{i}]", v) for i, v in self.cached.items()]
        for r in range(self.cfg.num_requests):
            out += [(f"n[{r}]", self.n[r]), (f"c[{r}]", self.c[r]),
                    (f"tl[{r}]", self.tl[r]), (f"ncb[{r}]", self.ncb[r])]
        return out + [("hr", self.hr), ("hk", self.hk), ("hn", self.hn)]


def cdiv(x: z3.ExprRef, b: int) -> z3.ExprRef:
    return z3.UDiv(x + (b - 1), _bv(b))


def initial(s: MState) -> list[z3.ExprRef]:
    cfg = s.cfg
    out = [s.free == cfg.num_blocks - 1, s.hr == -1, s.hk == 0, s.hn == 0]
    out += [z3.Not(v) for v in s.cached.values()]
    for r in range(cfg.num_requests):
        out += [s.n[r] == 0, s.c[r] == 0, s.tl[r] == 0, s.ncb[r] == 0]
    return out


def _leading_hits(s: MState, cap: int) -> z3.ExprRef:
    """How many of hashes 1..cap a lookup finds before its first miss."""
    total: z3.ExprRef = _bv(0)
    prefix: list[z3.ExprRef] = []
    for j in range(1, cap + 1):
        prefix.append(s.cached[j])
        total = total + z3.If(z3.And(prefix), _bv(1), _bv(0))
    return total


def transition(pre: MState, post: MState, op_var: z3.ExprRef, tag: str,
               mutant: str | None = None) -> list[z3.ExprRef]:
    """``post`` is a possible outcome of operation ``op_var`` from ``pre`` (with this
    step's choice variables, named by ``tag``)."""
    cfg = pre.cfg
    b, hmax, nreq = cfg.block_size, cfg.num_hashes, cfg.num_requests
    evictable = z3.BitVec(f"evictable@{tag}", WIDTH)
    returned = z3.BitVec(f"returned@{tag}", WIDTH)
    evicted = {i: z3.Bool(f"evicted[{i}]@{tag}") for i in pre.cached}
    cases: list[z3.ExprRef] = []
    ops = all_ops(cfg)

    def keep_requests(but: int | None) -> list[z3.ExprRef]:
        return [z3.And(post.n[q] == pre.n[q], post.c[q] == pre.c[q], post.tl[q] == pre.tl[q],
                       post.ncb[q] == pre.ncb[q]) for q in range(nreq) if q != but]

    def no_lookup() -> list[z3.ExprRef]:
        return [post.hr == -1, post.hk == 0, post.hn == 0]

    for index, op in enumerate(ops):
        r = op.req
        if op.kind == "admit":
            n = op.arg
            cap = n // b if mutant == "hits-not-capped" else (n - 1) // b
            k = _leading_hits(pre, min(cap, hmax))
            new = _bv(-(-n // b)) - k
            needed = new + evictable
            # allocate_slots refuses hits beyond its own cap (so it never adopts a whole
            # prompt, and num_new_tokens is never 0); else it needs the free blocks.
            ok = z3.And(z3.ULE(needed, pre.free), z3.ULE(k, (n - 1) // b))
            full = n // b
            taken = z3.And(
                post.n[r] == n, post.c[r] == n, post.tl[r] == -(-n // b),
                post.ncb[r] == full, post.free == pre.free - needed,
                *[post.cached[i] == (z3.BoolVal(True) if i <= full else
                                     z3.And(pre.cached[i], z3.Not(z3.And(evicted[i], new > 0))))
                  for i in pre.cached],
            )
            dropped = z3.And(
                post.n[r] == pre.n[r], post.c[r] == pre.c[r], post.tl[r] == pre.tl[r],
                post.ncb[r] == pre.ncb[r], post.free == pre.free,
                *[post.cached[i] == pre.cached[i] for i in pre.cached],
            )
            body = [pre.n[r] == 0, z3.ULE(evictable, k),
                    z3.If(ok, taken, dropped),
                    post.hr == r, post.hk == k, post.hn == n, *keep_requests(r)]
        elif op.kind == "decode":
            grown = cdiv(pre.c[r] + 1, b)
            new = z3.If(grown > pre.tl[r], grown - pre.tl[r], _bv(0))
            full = z3.UDiv(pre.c[r] + 1, _bv(b))
            body = [
                pre.n[r] > 0, pre.c[r] == pre.n[r], pre.n[r] < cfg.max_tokens,
                z3.ULE(new, pre.free),
                post.n[r] == pre.n[r] + 1, post.c[r] == pre.c[r] + 1,
                post.tl[r] == pre.tl[r] + new, post.free == pre.free - new,
                post.ncb[r] == z3.If(full > pre.ncb[r], full, pre.ncb[r]),
                *[post.cached[i] == z3.Or(
                    z3.And(pre.ncb[r] < i, i <= full),
                    z3.And(pre.cached[i], z3.Not(z3.And(evicted[i], new > 0))))
                  for i in pre.cached],
                *no_lookup(), *keep_requests(r),
            ]
        elif op.kind == "free":
            body = [
                pre.n[r] > 0, z3.ULE(returned, pre.tl[r]),
                z3.ULE(pre.free + returned, cfg.num_blocks - 1),
                post.free == pre.free + returned,
                post.n[r] == 0, post.c[r] == 0, post.tl[r] == 0, post.ncb[r] == 0,
                *[post.cached[i] == pre.cached[i] for i in pre.cached],
                *no_lookup(), *keep_requests(r),
            ]
        else:  # reset: refused while any request holds a block
            idle = z3.And([pre.tl[q] == 0 for q in range(nreq)])
            body = [
                post.free == pre.free,
                *[post.cached[i] == z3.And(z3.Not(idle), pre.cached[i]) for i in pre.cached],
                *no_lookup(), *keep_requests(None),
            ]
        cases.append(z3.And(op_var == index, *body))
    return [z3.Or(cases)]


def invariant_terms(s: MState) -> dict[str, z3.ExprRef]:
    cfg = s.cfg
    return {
        "hit-cap": z3.Implies(s.hr >= 0, s.hk * cfg.block_size <= s.hn - 1),
        "table-covers-computed": z3.And([s.tl[r] * cfg.block_size >= s.c[r]
                                         for r in range(cfg.num_requests)]),
    }


def auxiliary_terms(s: MState) -> dict[str, z3.ExprRef]:
    """Candidate facts for Houdini (bounds keep 8-bit arithmetic from wrapping)."""
    cfg = s.cfg
    t, b = cfg.max_tokens, cfg.block_size
    rs = range(cfg.num_requests)
    return {
        "free-in-range": z3.And(s.free >= 0, s.free <= cfg.num_blocks - 1),
        "tokens-in-range": z3.And([z3.And(s.n[r] >= 0, s.n[r] <= t) for r in rs]),
        "computed-is-tokens": z3.And([s.c[r] == s.n[r] for r in rs]),
        "table-fits-tokens": z3.And([s.tl[r] == cdiv(s.n[r], b) for r in rs]),
        "cached-within-table": z3.And([z3.And(s.ncb[r] >= 0, s.ncb[r] <= s.tl[r])
                                       for r in rs]),
        "lookup-in-range": z3.And(s.hn >= 0, s.hn <= t, s.hk >= 0, s.hk <= t,
                                  s.hr >= -1, s.hr < cfg.num_requests),
    }


# --------------------------------------------------------------------------- concrete


def stream_hashes(cfg: ManagerModelConfig) -> list[bytes]:
    req = Request("stream", (TOKEN,) * cfg.max_tokens, cfg.block_size, profile=cfg.profile)
    return list(req.block_hashes)


def abstract(cfg: ManagerModelConfig, w: MWorld, hashes: list[bytes]) -> dict[str, int | bool]:
    """The abstract state of a world of the executable model."""
    out: dict[str, int | bool] = {"free": len(w.m.pool.free_queue)}
    for i in range(1, cfg.num_hashes + 1):
        out[f"cached[{i}]"] = sp.get_cached_block(w.m.pool, hashes[i - 1]) is not None
    for r in range(cfg.num_requests):
        req = w.requests.get(r)
        out[f"n[{r}]"] = req.num_tokens if req else 0
        out[f"c[{r}]"] = req.num_computed_tokens if req else 0
        out[f"tl[{r}]"] = len(w.m.req_to_blocks.get(rid(r), []))
        out[f"ncb[{r}]"] = w.m.num_cached_block.get(rid(r), 0)
    hr, hk, hn = w.hit if w.hit is not None else (-1, 0, 0)
    out.update({"hr": hr, "hk": hk, "hn": hn})
    return out


def _fix(s: MState, values: dict[str, int | bool]) -> list[z3.ExprRef]:
    return [v == (z3.BoolVal(values[n]) if isinstance(values[n], bool) else _bv(values[n]))
            for n, v in s.variables()]


@dataclass
class ManagerSanity:
    failures: list[str] = field(default_factory=list)
    fired: dict[str, int] = field(default_factory=dict)
    worlds: list[MWorld] = field(default_factory=list)
    pairs: int = 0
    seconds: float = 0.0


def sanity_check(cfg: ManagerModelConfig, mutant: str | None = None, max_depth: int = 4,
                 max_worlds: int = 150) -> ManagerSanity:
    """``initial-state`` (satisfiable, and the spec's fresh manager is admitted),
    ``cross-check`` (every step the spec takes from an explored world is admitted by the
    relation) and ``operations-enabled`` (each operation is admitted from some world)."""
    started = time.monotonic()
    rep = ManagerSanity()
    sem = semantics(mutant)
    hashes = stream_hashes(cfg)
    pre, post = MState(cfg, "pre"), MState(cfg, "post")
    op = z3.BitVec("op", WIDTH)
    solver = z3.SolverFor("QF_BV")
    solver.add(*initial(pre))
    if solver.check() != z3.sat:
        rep.failures.append("initial-state: z3's initial state is unsatisfiable")
        return rep
    solver.add(*_fix(pre, abstract(cfg, explore(cfg, sem, 0)[0][0], hashes)))
    if solver.check() != z3.sat:
        rep.failures.append("initial-state: z3's initial state is not the spec's fresh manager")
    solver = z3.SolverFor("QF_BV")
    solver.add(*transition(pre, post, op, "x", mutant))
    ops = all_ops(cfg)
    for w, path, depth in explore(cfg, sem, max_depth, max_worlds):
        rep.worlds.append(w)
        for index, o in enumerate(ops):
            res = step(cfg, w, o, sem)
            if res is None:
                continue
            rep.pairs += 1
            solver.push()
            solver.add(op == index, *_fix(pre, abstract(cfg, w, hashes)),
                       *_fix(post, abstract(cfg, res[0], hashes)))
            verdict = solver.check()
            solver.pop()
            if verdict != z3.sat:
                where = "; ".join(p.describe() for p in path) or "the initial state"
                rep.failures.append(f"cross-check: after [{where}], the spec takes "
                                    f"{o.describe()} and z3 does not admit its outcome")
                if len(rep.failures) >= 5:
                    return rep
            else:
                rep.fired.setdefault(o.kind, depth)
    for kind in ("admit", "decode", "free", "reset"):
        if kind not in rep.fired:
            rep.failures.append(f"operations-enabled: z3 never admits {kind}")
    rep.seconds = time.monotonic() - started
    return rep


# --------------------------------------------------------------------------- proofs


def houdini(cfg: ManagerModelConfig, mutant: str | None = None) -> tuple[list[str], float]:
    """The largest inductive subset of the invariants and auxiliary facts."""
    started = time.monotonic()
    s0, s1 = MState(cfg, "h0"), MState(cfg, "h1")
    pre = {**invariant_terms(s0), **auxiliary_terms(s0)}
    post = {**invariant_terms(s1), **auxiliary_terms(s1)}
    init = z3.SolverFor("QF_BV")
    init.add(*initial(s0))
    alive = []
    for name, term in pre.items():
        init.push()
        init.add(z3.Not(term))
        if init.check() == z3.unsat:
            alive.append(name)
        init.pop()
    step_terms = transition(s0, s1, z3.BitVec("op@h", WIDTH), "h", mutant)
    while alive:
        solver = z3.SolverFor("QF_BV")
        solver.add(*step_terms, *[pre[n] for n in alive])
        failed = []
        for name in alive:
            solver.push()
            solver.add(z3.Not(post[name]))
            verdict = solver.check()
            solver.pop()
            if verdict == z3.unknown:
                raise_if_interrupted(solver)
                failed.append(name)
            elif verdict == z3.sat:
                failed.append(name)
        if not failed:
            break
        alive = [n for n in alive if n not in failed]
    return alive, time.monotonic() - started


@dataclass
class ManagerCounterexample:
    invariant: str
    ops: list[MOp]
    calls: list[list[tuple[str, dict]]]
    violations: list[str]


class AbstractionGap(RuntimeError):
    """z3's sequence does not break the invariant when the executable spec runs it."""


def bmc(cfg: ManagerModelConfig, mutant: str | None, max_depth: int,
        assume: list[str] = ()) -> tuple[int, ManagerCounterexample | None]:  # type: ignore[assignment]
    """Iterative deepening: (depth checked, the shortest counterexample or ``None``)."""
    states = [MState(cfg, "0")]
    op_vars: list[z3.ExprRef] = []
    solver = z3.SolverFor("QF_BV")
    solver.add(*initial(states[0]))
    facts = lambda s: {**invariant_terms(s), **auxiliary_terms(s)}  # noqa: E731
    solver.add(*[facts(states[0])[a] for a in assume])
    for k in range(max_depth + 1):
        if k > 0:
            s = MState(cfg, str(k))
            op = z3.BitVec(f"op@{k}", WIDTH)
            solver.add(*transition(states[-1], s, op, str(k), mutant))
            solver.add(*[facts(s)[a] for a in assume])
            states.append(s)
            op_vars.append(op)
        terms = invariant_terms(states[-1])
        for name in INVARIANTS:
            solver.push()
            solver.add(z3.Not(terms[name]))
            verdict = solver.check()
            model = solver.model() if verdict == z3.sat else None
            solver.pop()
            if verdict == z3.unknown:
                raise_if_interrupted(solver)
                return k - 1, None
            if model is not None:
                ops = [all_ops(cfg)[model.eval(v).as_signed_long()] for v in op_vars]
                return k, _confirm(cfg, mutant, name, ops)
    return max_depth, None


def _confirm(cfg: ManagerModelConfig, mutant: str | None, name: str, ops: list[MOp]
             ) -> ManagerCounterexample:
    sem = semantics(mutant)
    shown = "; ".join(o.describe() for o in ops)
    try:
        worlds, calls = run_ops(cfg, ops, sem)
    except RuntimeError as exc:
        raise AbstractionGap(f"z3 found [{shown}], but {exc}") from None
    found = broken(cfg, worlds[-1]).get(name)
    if not found:
        raise AbstractionGap(f"z3 says [{shown}] breaks {name}; the executable spec run of "
                             "it does not")
    return ManagerCounterexample(name, ops, calls, found)
