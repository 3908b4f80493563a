"""The request level for the model checker: requests with tokens over a block size.

``kvspec prove --level manager`` checks the two manager invariants that speak of tokens,
``hit-cap`` (a hit leaves at least the last token to compute) and
``table-covers-computed`` (every computed token has a slot), over a small world run by
the spec's :mod:`kvspec.spec.manager`:

* ``R`` requests, block size ``B``, prompts of ``1..T`` tokens, a pool of ``N`` blocks;
* every prompt is a prefix of one token stream (token 1 repeated), so prefixes are
  shared and a block's hash is fixed by its index: hash ``i`` is the chained hash of the
  stream's first ``i`` blocks. (Different contents, LoRA and salts are not modelled:
  neither invariant reads them.)

Operations, each a few protocol calls, as a scheduler makes them:

``admit(r, n)``
    ``add_request(r, n tokens)``, ``get_computed_blocks(r)``, then
    ``allocate_slots(r, n - hit tokens, hit tokens, hits)`` and, when it succeeds,
    ``set_num_computed_tokens(r, n)`` (the prefill ran). When it does not (the pool
    cannot hold the request, or the call is refused), the scheduler drops the request:
    ``free(r)``, a no-op for a request without blocks.
``decode(r)``
    ``append_output_tokens(r, [1])``, ``allocate_slots(r, 1)``, then
    ``set_num_computed_tokens(r, computed + 1)``; allowed once the prompt is computed and
    while the request has fewer than ``T`` tokens; not taken when the pool is full.
``free(r)``
    ``free(r)``: the table is freed in reverse; the request leaves.
``reset()``
    ``reset_prefix_cache()``.

This file runs the operations on the executable spec (the ground truth), and on the
manager mutant ``hits-not-capped`` (its lookup caps hits at ``num_tokens // B`` blocks).
The z3 model is :mod:`kvspec.spec.symbolic.manager_encoding`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from kvspec.spec import manager as sm
from kvspec.spec import manager_invariants as mi
from kvspec.spec import pool as sp
from kvspec.spec.errors import Refused
from kvspec.spec.profiles import CURRENT, Profile
from kvspec.spec.request import Request

TOKEN = 1


@dataclass(frozen=True)
class ManagerModelConfig:
    """One finite instance: ``num_blocks`` counts the null block."""

    num_blocks: int = 4
    num_requests: int = 2
    block_size: int = 2
    max_tokens: int = 4
    profile: Profile = CURRENT

    def __post_init__(self) -> None:
        for name in ("num_blocks", "num_requests", "block_size", "max_tokens"):
            if getattr(self, name) < (2 if name == "num_blocks" else 1):
                raise ValueError(f"{name} is {getattr(self, name)}, too small")

    @property
    def num_hashes(self) -> int:
        return self.max_tokens // self.block_size

    def describe(self) -> str:
        return (f"N={self.num_blocks} blocks (block 0 null), R={self.num_requests} requests, "
                f"B={self.block_size} tokens per block, T={self.max_tokens} tokens at most, "
                f"profile {self.profile.name}")

    def short(self) -> str:
        return (f"N={self.num_blocks}, R={self.num_requests}, B={self.block_size}, "
                f"T={self.max_tokens}")


class MOp(NamedTuple):
    kind: str
    req: int = -1
    arg: int = 0

    def describe(self) -> str:
        if self.kind == "admit":
            return f"admit(r{self.req}, {self.arg} tokens)"
        if self.kind == "reset":
            return "reset()"
        return f"{self.kind}(r{self.req})"


def all_ops(cfg: ManagerModelConfig) -> list[MOp]:
    ops: list[MOp] = []
    for r in range(cfg.num_requests):
        ops += [MOp("admit", r, n) for n in range(1, cfg.max_tokens + 1)]
    ops += [MOp("decode", r) for r in range(cfg.num_requests)]
    ops += [MOp("free", r) for r in range(cfg.num_requests)]
    ops.append(MOp("reset"))
    return ops


#: The manager invariants the model proves (names of :mod:`kvspec.spec.manager_invariants`).
INVARIANTS = ("hit-cap", "table-covers-computed")


# --------------------------------------------------------------------------- semantics


def _spec_lookup(m: sm.ManagerState, request: Request) -> tuple[list[int], int]:
    return sm.get_computed_blocks(m, request)  # looked up at call time, like twins._spec


def lookup_not_capped(m: sm.ManagerState, request: Request) -> tuple[list[int], int]:
    """``hits-not-capped``: the scan stops at ``num_tokens // B`` blocks, not
    ``(num_tokens - 1) // B``, so a fully cached prompt hits every block."""
    hits: list[int] = []
    for h in request.block_hashes[: request.num_tokens // m.block_size]:
        b = sp.get_cached_block(m.pool, h)
        if b is None:
            break
        hits.append(b)
    return hits, len(hits) * m.block_size


@dataclass(frozen=True)
class ManagerSemantics:
    get_computed_blocks: Callable[[sm.ManagerState, Request], tuple[list[int], int]] = (
        _spec_lookup)


MUTANTS: dict[str, ManagerSemantics] = {
    "hits-not-capped": ManagerSemantics(get_computed_blocks=lookup_not_capped),
}


def semantics(mutant: str | None) -> ManagerSemantics:
    if mutant is None:
        return ManagerSemantics()
    try:
        return MUTANTS[mutant]
    except KeyError:
        raise ValueError(f"unknown manager mutant {mutant!r}; expected one of: "
                         f"{', '.join(MUTANTS)}") from None


# --------------------------------------------------------------------------- worlds


@dataclass
class MWorld:
    """The manager and the scheduler's requests; ``hit``: the lookup the step that led
    here made (request index, hit blocks, the request's tokens), if any."""

    m: sm.ManagerState
    requests: dict[int, Request] = field(default_factory=dict)
    hit: tuple[int, int, int] | None = None

    def key(self) -> tuple:
        reqs = tuple(sorted((r, q.num_tokens, q.num_computed_tokens)
                            for r, q in self.requests.items()))
        return (self.m.key(), reqs, self.hit)

    def clone(self) -> MWorld:
        reqs = {r: _copy(q) for r, q in self.requests.items()}
        return MWorld(self.m.clone(), reqs, None)


def _copy(q: Request) -> Request:
    new = Request(q.request_id, tuple(q.prompt_token_ids), q.block_size, profile=q.profile)
    extra = list(q.all_token_ids[len(q.prompt_token_ids):])
    if extra:
        new.append_output_token_ids(extra)
    new.num_computed_tokens = q.num_computed_tokens
    return new


def initial_world(cfg: ManagerModelConfig) -> MWorld:
    return MWorld(sm.init_manager(cfg.num_blocks, cfg.block_size, profile=cfg.profile))


def rid(r: int) -> str:
    return f"r{r}"


#: One protocol call as a trace records it.
Call = tuple[str, dict[str, Any]]


def step(cfg: ManagerModelConfig, w: MWorld, op: MOp, sem: ManagerSemantics
         ) -> tuple[MWorld, list[Call]] | None:
    """Carry out ``op`` on the spec (with ``sem``'s lookup); ``None`` when the scheduler
    would not take it."""
    out = w.clone()
    m, calls = out.m, []
    r = op.req
    if op.kind == "admit":
        if r in out.requests:
            return None
        req = Request(rid(r), (TOKEN,) * op.arg, cfg.block_size, profile=cfg.profile)
        calls.append(("add_request", {"request_id": rid(r), "prompt_token_ids": [TOKEN] * op.arg}))
        calls.append(("get_computed_blocks", {"request_id": rid(r)}))
        hits, hit_tokens = sem.get_computed_blocks(m, req)
        out.hit = (r, len(hits), req.num_tokens)
        args = {"request_id": rid(r), "num_new_tokens": req.num_tokens - hit_tokens,
                "num_new_computed_tokens": hit_tokens, "new_computed_blocks": list(hits)}
        calls.append(("allocate_slots", args))
        try:
            got = sm.allocate_slots(m, req, req.num_tokens - hit_tokens, hit_tokens, hits)
        except Refused:
            got = None
        if got is None:
            calls.append(("free", {"request_id": rid(r)}))
            out.m = w.m.clone()
            return out, calls
        req.num_computed_tokens = req.num_tokens
        calls.append(("set_num_computed_tokens",
                      {"request_id": rid(r), "num_computed_tokens": req.num_tokens}))
        out.requests[r] = req
    elif op.kind == "decode":
        req = out.requests.get(r)
        if req is None or req.num_computed_tokens != req.num_tokens:
            return None
        if req.num_tokens >= cfg.max_tokens:
            return None
        probe = m.clone()
        trial = _copy(req)
        trial.append_output_token_ids([TOKEN])
        if sm.allocate_slots(probe, trial, 1) is None:
            return None
        req.append_output_token_ids([TOKEN])
        calls.append(("append_output_tokens", {"request_id": rid(r), "token_ids": [TOKEN]}))
        calls.append(("allocate_slots", {"request_id": rid(r), "num_new_tokens": 1}))
        sm.allocate_slots(m, req, 1)
        req.num_computed_tokens += 1
        calls.append(("set_num_computed_tokens",
                      {"request_id": rid(r), "num_computed_tokens": req.num_computed_tokens}))
    elif op.kind == "free":
        if r not in out.requests:
            return None
        calls.append(("free", {"request_id": rid(r)}))
        sm.free(m, rid(r))
        del out.requests[r]
    elif op.kind == "reset":
        calls.append(("reset_prefix_cache", {}))
        sm.reset_prefix_cache(m)
    else:
        raise ValueError(f"unknown manager model operation {op.kind!r}")
    return out, calls


def broken(cfg: ManagerModelConfig, w: MWorld) -> dict[str, list[str]]:
    """The model's invariants, judged by :mod:`kvspec.spec.manager_invariants` itself."""
    reqs = list(w.requests.values())
    hits: list[mi.HitView] = []
    if w.hit is not None:
        r, k, n = w.hit
        hits.append(mi.HitView(rid(r), n, tuple(range(k)), k * cfg.block_size, ()))
    snap = mi.snapshot(w.m, reqs, hits=hits)
    return mi.check_all(snap, list(INVARIANTS))


def run_ops(cfg: ManagerModelConfig, ops: list[MOp], sem: ManagerSemantics
            ) -> tuple[list[MWorld], list[list[Call]]]:
    worlds, calls = [initial_world(cfg)], []
    for i, op in enumerate(ops):
        res = step(cfg, worlds[-1], op, sem)
        if res is None:
            raise RuntimeError(f"step {i + 1}: the spec does not take {op.describe()}")
        worlds.append(res[0])
        calls.append(res[1])
    return worlds, calls


def explore(cfg: ManagerModelConfig, sem: ManagerSemantics, max_depth: int,
            max_worlds: int = 5000) -> list[tuple[MWorld, list[MOp], int]]:
    """Breadth first: (world, operations reaching it, depth), at most ``max_worlds``."""
    w0 = initial_world(cfg)
    out = [(w0, [], 0)]
    seen = {w0.key()}
    frontier = [(w0, [])]
    ops = all_ops(cfg)
    for depth in range(1, max_depth + 1):
        nxt = []
        for w, path in frontier:
            for op in ops:
                res = step(cfg, w, op, sem)
                if res is None or res[0].key() in seen:
                    continue
                seen.add(res[0].key())
                nxt.append((res[0], [*path, op]))
                out.append((res[0], [*path, op], depth))
                if len(out) >= max_worlds:
                    return out
        frontier = nxt
    return out


def shortest_violation(cfg: ManagerModelConfig, sem: ManagerSemantics, max_depth: int
                       ) -> int | None:
    """Breadth first over the executable model: the fewest operations breaking an invariant."""
    for w, path, _d in explore(cfg, sem, max_depth, max_worlds=10**6):
        if broken(cfg, w):
            return len(path)
    return None
