"""The manager level's harness: the harness plays the scheduler.

It creates requests whose prompts share prefixes, looks them up, admits them
(``allocate_slots`` with the hits), runs chunked prefill and decode steps (the model
"computes" what was scheduled, and a token is sampled once a request has computed all its
tokens), preempts, finishes and aborts requests, and sometimes resets the prefix cache.
Each move takes one manager operation; composite moves chain them into a scheduler's usual
flows. Every step goes through the
:class:`~kvspec.conformance.manager.driver.ManagerDriver`, which judges it.

Why the arguments look the way they do (see HARNESS.md):

* prompts are a prefix of one of three fixed token sequences, two of which share their first
  four tokens, plus a short tail from a two-token alphabet: hits are common, partial hits
  too, and different prefixes end in equal blocks (which only the hash chain tells apart);
* block size 2 or 4 and pools of 3-10 blocks: eviction, reuse of cached blocks, ``None``
  from ``allocate_slots`` and preemption only happen under pressure;
* some requests carry a LoRA adapter or a cache salt, and the adapter's name is the same
  string as a tenant's salt (and the empty salt, which must mean "no salt", is among the
  salts), and some carry both (the keys' order is then part of the bytes): a manager that
  keys them without saying which is which mixes two tenants;
* follow-up turns repeat a finished request's tokens (outputs included), so its whole
  history is a prefix hit while it stays cached, often at ref count 0 near the queue's end;
* hits adopted by ``allocate_slots`` are the ones ``get_computed_blocks`` returns (the
  spec's answer, which a conforming target shares), as the protocol promises;
* bad input is one move with a ``kind``: the target must refuse, and change nothing;
* moves pick requests by ``index % len(...)`` and are listed simplest first, so shrinking
  deletes steps and lowers values into a short, readable sequence.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, replace
from typing import Any

from kvspec.conformance.level import (
    Domain,
    Harness,
    Recorder,
    RunOptions,
    integers,
    move,
    one_of,
    sequences,
)
from kvspec.conformance.manager.driver import ManagerConfig, ManagerDriver, start_driver
from kvspec.conformance.trace import Step
from kvspec.spec import manager as sm

#: Base prompts: 0 and 1 share their first four tokens; 2 shares nothing.
PREFIXES: tuple[tuple[int, ...], ...] = (
    (1, 2, 3, 4, 5, 6, 7, 8),
    (1, 2, 3, 4, 9, 10, 11, 12),
    (13, 14, 15, 16, 17, 18, 19, 20),
)
TAIL_TOKENS = (21, 22)
SAMPLED_TOKENS = (5, 21, 22)
FILL_TOKEN = 30
"""Tokens of ``fill`` requests are ``FILL_TOKEN + 0..3``: shared with no other request."""
TENANT = "x"
"""One string used both as a LoRA adapter's name and as a tenant's cache salt."""
IDENTITIES: tuple[tuple[str | None, str | None], ...] = (
    (None, None), (None, None), (None, None), (TENANT, None), (None, TENANT), (None, ""),
    (TENANT, TENANT),
)
"""(lora_name, cache_salt) choices, plain requests the most common."""
MAX_TOKENS = 14
"""A request reaching this many tokens finishes (its ``max_tokens``)."""
MAX_REQUESTS = 6
"""Waiting plus running requests at most: more only dilutes the pressure on few blocks."""

BAD_INPUTS = (
    "zero_new_tokens",
    "negative_new_tokens",
    "negative_lookahead",
    "hit_length_mismatch",
    "hits_into_running_request",
    "unknown_request",
    "duplicate_request",
    "computed_beyond_tokens",
)
UNKNOWN_ID = "ghost"

SITUATIONS = (
    "hit-on-evictable-block",
    "shared-prefix",
    "hit-capped",
    "duplicate-hash",
    "evict-one-of-duplicates",
    "lora-salt-collision",
    "lora-and-salt",
    "cannot-schedule",
    "preemption",
    "long-chain",
)


def unsupported_bad_inputs(factory: Callable[..., object]) -> frozenset[str]:
    """The bad-input kinds a factory's targets are known not to refuse.

    A target that does not validate some caller mistakes (upstream trusts its scheduler)
    names them in ``factory.unsupported_bad_input``; the harness then never sends them, and
    ``kvspec check`` lists them as switched off. Names outside :data:`BAD_INPUTS` are an
    error, so a typo cannot switch a check off silently.
    """
    names = frozenset(getattr(factory, "unsupported_bad_input", frozenset()))
    unknown = names - set(BAD_INPUTS)
    if unknown:
        raise ValueError(
            f"{factory!r}: unsupported_bad_input names {sorted(unknown)} are not bad-input "
            f"kinds; expected a subset of {BAD_INPUTS}"
        )
    return names


@dataclass(frozen=True)
class Sched:
    """The harness's view of one request: its place in the scheduler, and the tokens
    scheduled by its last ``allocate_slots`` that the model has not computed yet."""

    request_id: str
    state: str  # "waiting", "running" or "finished"
    pending: int = 0


# --------------------------------------------------------------------------- domains


def _has(state: str) -> Callable[[ManagerHarness], bool]:
    return lambda h: bool(h.with_state(state))


def _prompt(rng: random.Random) -> tuple[int, ...]:
    """A prefix of one of the base prompts, plus a short tail."""
    prefix = PREFIXES[rng.randrange(len(PREFIXES))][: rng.randint(0, len(PREFIXES[0]))]
    return prefix + sequences(TAIL_TOKENS, 0, 3)(rng) or (TAIL_TOKENS[0],)


INDEX = Domain(integers(0, 7))
TOKEN = Domain(one_of(SAMPLED_TOKENS))
LOOKAHEAD = Domain(integers(0, 2))
PROMPT = Domain(_prompt)
IDENTITY = Domain(one_of(IDENTITIES))


class ManagerHarness(Harness):
    """The scheduler over a :class:`ManagerDriver`; see the module docstring."""

    driver: ManagerDriver

    def __init__(self, driver: ManagerDriver, recorder: Recorder, options: RunOptions,
                 bad_kinds: tuple[str, ...]) -> None:
        super().__init__(driver, recorder)
        self.requests: list[Sched] = []  # in the order they were added
        self.bad_kinds = bad_kinds if options.checks_bad_input else ()

    # -------------------------------------------------------------- plumbing

    def key(self) -> Hashable:
        return tuple(self.requests)

    def copy_bookkeeping(self) -> ManagerHarness:
        twin = self.shallow_copy()
        twin.requests = list(self.requests)
        return twin

    @property
    def spec(self) -> sm.ManagerState:
        return self.driver.spec

    @property
    def block_size(self) -> int:
        return self.driver.config.block_size

    def with_state(self, state: str) -> list[Sched]:
        return [s for s in self.requests if s.state == state]

    def pick(self, state: str, index: int) -> Sched:
        chosen = self.with_state(state)
        return chosen[index % len(chosen)]

    def update(self, s: Sched, **changes: Any) -> Sched:
        new = replace(s, **changes)
        self.requests[self.requests.index(s)] = new
        return new

    def request(self, s: Sched) -> Any:
        return self.driver.requests[s.request_id]

    def live(self) -> int:
        return sum(1 for s in self.requests if s.state != "finished")

    def has_room(self) -> bool:
        return self.live() < MAX_REQUESTS

    def idle_running(self) -> list[Sched]:
        return [s for s in self.with_state("running") if not s.pending]

    # -------------------------------------------------------------- moves

    @move(prompt=PROMPT, identity=IDENTITY, weight=3, enabled=has_room)
    def add(self, prompt: tuple[int, ...], identity: tuple[str | None, str | None]) -> None:
        """A new request arrives and waits: a shared prefix plus its own tail."""
        lora, salt = identity
        rid = f"r{len(self.requests)}"
        known = [self.driver.requests[s.request_id] for s in self.requests]
        if any((lora is not None and r.cache_salt == lora) or
               (salt and r.lora is not None and r.lora.name == salt) for r in known):
            self.note("lora-salt-collision")
        if lora is not None and salt:
            self.note("lora-and-salt")
        out = self.do("add_request", request_id=rid, prompt_token_ids=list(prompt),
                      lora_name=lora, cache_salt=salt)
        if out.refused is None:
            self.requests.append(Sched(rid, "waiting"))

    @move(index=INDEX, cut=Domain(integers(0, 3)), tail=Domain(sequences(TAIL_TOKENS, 0, 2)),
          weight=2, enabled=lambda h: h.has_room() and bool(h.requests))
    def add_like(self, index: int, cut: int, tail: tuple[int, ...]) -> None:
        """A new request repeats an earlier one's tokens (outputs too), minus ``cut``
        tokens, plus its own tail, with the same identity: a follow-up turn, whose whole
        history is a prefix hit while it is still cached."""
        old = self.request(self.requests[index % len(self.requests)])
        tokens = list(old.all_token_ids)
        prompt = tuple(tokens[: max(len(tokens) - cut, 1)]) + tail
        self.add(prompt, (None if old.lora is None else old.lora.name, old.cache_salt))

    @move(index=INDEX, weight=2, enabled=_has("waiting"))
    def look(self, index: int) -> None:
        """Look a waiting request's prefix up (a scheduler does this before admitting it)."""
        s = self.pick("waiting", index)
        req = self.request(s)
        hits, _ = sm.get_computed_blocks(self.spec, req)
        cached = 0
        while cached < len(req.block_hashes) and sm.pool.get_cached_block(
                self.spec.pool, req.block_hashes[cached]) is not None:
            cached += 1
        if cached > len(hits):
            self.note("hit-capped")  # the whole prompt is cached; the last block is not hit
        self.do("get_computed_blocks", request_id=s.request_id)

    @move(index=INDEX, chunk=Domain(integers(0, 8)), lookahead=LOOKAHEAD,
          weight=4, enabled=_has("waiting"))
    def admit(self, index: int, chunk: int, lookahead: int) -> None:
        """Schedule a waiting request: look it up, then allocate a chunk adopting the hits.
        ``chunk == 0`` with hits adopts the hits alone (legal in ``current``, refused in
        ``classic``). ``None`` leaves the request waiting."""
        self.look(index)
        s = self.pick("waiting", index)
        req = self.request(s)
        hits, num_hit = sm.get_computed_blocks(self.spec, req)
        pool = self.spec.pool
        if any(pool.ref_cnt[b] == 0 for b in hits):
            self.note("hit-on-evictable-block")
        if any(pool.ref_cnt[b] > 0 for b in hits):
            self.note("shared-prefix")
        remaining = req.num_tokens - num_hit
        num_new = min(chunk, remaining) if chunk or num_hit else 1
        out = self.allocate(s, num_new=num_new, num_new_computed_tokens=num_hit,
                            new_computed_blocks=list(hits), num_lookahead_tokens=lookahead)
        if out:
            self.update(s, state="running", pending=num_hit + num_new)

    @move(index=INDEX, chunk=Domain(integers(1, 8)), lookahead=LOOKAHEAD,
          weight=4, enabled=lambda h: bool(h.idle_running()))
    def step(self, index: int, chunk: int, lookahead: int) -> None:
        """One step of a running request: a prefill chunk, or one decode token."""
        idle = self.idle_running()
        s = idle[index % len(idle)]
        req = self.request(s)
        num_new = min(chunk, req.num_tokens - req.num_computed_tokens)
        if num_new <= 0:
            return
        if self.allocate(s, num_new=num_new, num_lookahead_tokens=lookahead):
            self.update(s, pending=num_new)

    def allocate(self, s: Sched, *, num_new: int, **args: Any) -> bool:
        """``allocate_slots``; whether it succeeded."""
        hashes = list(self.spec.pool.block_hash)
        out = self.do("allocate_slots", request_id=s.request_id, num_new_tokens=num_new,
                      **{k: v for k, v in args.items() if v})
        for b in out.result or ():  # reusing a cached block evicts it; note when it had twins
            if hashes[b] is not None and hashes.count(hashes[b]) > 1:
                self.note("evict-one-of-duplicates")
        if out.refused is None and out.result is None:
            self.note("cannot-schedule")
        ok = out.refused is None and out.result is not None
        if ok:
            self._note_cache_situations(out.result)
        return ok

    def _note_cache_situations(self, new_blocks: list[int]) -> None:
        pool = self.spec.pool
        if any(len(holders) > 1 for holders in pool.cached.values()):
            self.note("duplicate-hash")
        if any(len(t) >= 3 and all(pool.block_hash[b] is not None for b in t[:3])
               for t in self.spec.req_to_blocks.values()):
            self.note("long-chain")

    @move(index=INDEX, weight=4, enabled=lambda h: any(s.pending for s in h.requests))
    def compute(self, index: int) -> None:
        """The model computed what was scheduled: the scheduler advances the request."""
        pending = [s for s in self.requests if s.pending]
        s = pending[index % len(pending)]
        req = self.request(s)
        done = min(req.num_computed_tokens + s.pending, req.num_tokens)
        out = self.do("set_num_computed_tokens", request_id=s.request_id,
                      num_computed_tokens=done)
        if out.refused is None:
            self.update(s, pending=0)

    @move(index=INDEX, token=TOKEN, weight=3,
          enabled=lambda h: any(h.done_computing(s) for s in h.idle_running()))
    def sample(self, index: int, token: int) -> None:
        """A request that computed all its tokens samples the next one."""
        ready = [s for s in self.idle_running() if self.done_computing(s)]
        s = ready[index % len(ready)]
        self.do("append_output_tokens", request_id=s.request_id, token_ids=[token])

    def done_computing(self, s: Sched) -> bool:
        req = self.request(s)
        return req.num_computed_tokens == req.num_tokens and req.num_tokens < MAX_TOKENS

    @move(index=INDEX, weight=2, enabled=_has("running"))
    def finish(self, index: int) -> None:
        """A running request finishes (stop token): its table is freed, tail first."""
        s = self.pick("running", index)
        self.update(s, state="finished", pending=0)
        self.do("free", request_id=s.request_id)

    @move(index=INDEX, weight=2, enabled=_has("running"))
    def preempt(self, index: int) -> None:
        """Make room: free a running request and requeue it with nothing computed."""
        s = self.pick("running", index)
        self.note("preemption")
        self.update(s, state="waiting", pending=0)
        self.do("preempt", request_id=s.request_id)

    @move(index=INDEX, enabled=_has("waiting"))
    def abort(self, index: int) -> None:
        """A waiting request is aborted: freeing a request without blocks is a no-op."""
        s = self.pick("waiting", index)
        self.update(s, state="finished")
        self.do("free", request_id=s.request_id)

    @move(index=INDEX, enabled=_has("finished"))
    def free_again(self, index: int) -> None:
        """A finished request is freed a second time (an abort racing the finish)."""
        self.do("free", request_id=self.pick("finished", index).request_id)

    @move(enabled=lambda h: any(x is not None for x in h.spec.pool.block_hash))
    def reset(self) -> None:
        """Reset the prefix cache (refused with False while any block is held)."""
        self.do("reset_prefix_cache")

    # -------------------------------------------------------------- composite flows

    @move(index=INDEX, chunk=Domain(integers(0, 8)), lookahead=LOOKAHEAD, token=TOKEN,
          weight=6,
          enabled=_has("waiting"))
    def schedule(self, index: int, chunk: int, lookahead: int, token: int) -> None:
        """A scheduler's whole turn for a waiting request: admit it, compute the chunk, and
        sample (or finish) when it has computed all its tokens."""
        s = self.pick("waiting", index)
        self.admit(self.with_state("waiting").index(s), chunk, lookahead)
        self.run_to_end_of_step(s.request_id, token)

    @move(index=INDEX, chunk=Domain(integers(1, 8)), lookahead=LOOKAHEAD, token=TOKEN,
          weight=6,
          enabled=lambda h: bool(h.idle_running()))
    def decode(self, index: int, chunk: int, lookahead: int, token: int) -> None:
        """A running request's whole step: allocate, compute, sample or finish."""
        idle = self.idle_running()
        s = idle[index % len(idle)]
        self.step(idle.index(s), chunk, lookahead)
        self.run_to_end_of_step(s.request_id, token)

    def run_to_end_of_step(self, request_id: str, token: int) -> None:
        s = next(x for x in self.requests if x.request_id == request_id)
        if not s.pending:
            return
        self.compute([x for x in self.requests if x.pending].index(s))
        s = next(x for x in self.requests if x.request_id == request_id)
        req = self.request(s)
        if req.num_computed_tokens < req.num_tokens:
            return
        if req.num_tokens >= MAX_TOKENS:
            self.finish(self.with_state("running").index(s))
        else:
            self.do("append_output_tokens", request_id=request_id, token_ids=[token])

    @move(leave=Domain(integers(0, 3)), token=Domain(integers(0, 3)), weight=2,
          enabled=has_room)
    def fill(self, leave: int, token: int) -> None:
        """A request of its own tokens takes all free blocks but ``leave``: the pool is then
        at the edge where capacity checks and eviction order decide everything (the free
        blocks left are the most recently freed cached ones)."""
        num_blocks = len(self.spec.pool.free_queue) - leave
        if num_blocks <= 0:
            return
        self.add((FILL_TOKEN + token,) * (num_blocks * self.block_size), (None, None))
        self.schedule(len(self.with_state("waiting")) - 1, 8 * num_blocks, 0,
                      SAMPLED_TOKENS[0])

    @move(index=INDEX, leave=Domain(integers(0, 5)), cut=Domain(integers(0, 3)),
          chunk=Domain(integers(0, 8)), token=TOKEN, weight=3,
          enabled=lambda h: bool(h.with_state("finished")) and h.live() < MAX_REQUESTS - 1)
    def follow_up(self, index: int, leave: int, cut: int, chunk: int, token: int) -> None:
        """A finished request's next turn arrives while the pool is busy.

        Everything but ``leave`` free blocks is taken, then the turn (the old tokens minus
        ``cut``) is admitted. Its hits are the old request's blocks, at ref count 0 near the
        free queue's end: where the capacity check must count them, and they must be
        touched before any new block is popped.
        """
        source = self.pick("finished", index)
        self.fill(leave, 0)
        if not self.has_room():
            return
        self.add_like(self.requests.index(source), cut, ())
        if self.requests[-1].state == "waiting":
            self.schedule(len(self.with_state("waiting")) - 1, chunk, 0, token)

    # -------------------------------------------------------------- bad input

    @move(kind=Domain(one_of(BAD_INPUTS)), pick=INDEX, weight=2,
          enabled=lambda h: bool(h.bad_kinds))
    def bad(self, kind: str, pick: int) -> None:
        """An operation the spec refuses: the target must raise and change nothing."""
        if kind not in self.bad_kinds:
            return
        step = self.bad_step(kind, pick)
        if step is not None:
            self.current_move = f"bad:{kind}"
            self.do(step.op, **step.args)

    def bad_step(self, kind: str, pick: int) -> Step | None:
        running = self.with_state("running")
        waiting = self.with_state("waiting")
        run = running[pick % len(running)] if running else None
        wait = waiting[pick % len(waiting)] if waiting else None
        any_req = run or wait
        bs = self.block_size
        if kind == "zero_new_tokens" and any_req:
            return Step("allocate_slots", {"request_id": any_req.request_id,
                                           "num_new_tokens": 0})
        if kind == "negative_new_tokens" and any_req:
            return Step("allocate_slots", {"request_id": any_req.request_id,
                                           "num_new_tokens": -1})
        if kind == "negative_lookahead" and any_req:
            return Step("allocate_slots", {"request_id": any_req.request_id,
                                           "num_new_tokens": 1, "num_lookahead_tokens": -1})
        if kind == "hit_length_mismatch" and wait:
            return Step("allocate_slots", {"request_id": wait.request_id, "num_new_tokens": 1,
                                           "num_new_computed_tokens": bs,
                                           "new_computed_blocks": []})
        if kind == "hits_into_running_request" and run:
            table = self.spec.req_to_blocks.get(run.request_id, [])
            if table:
                return Step("allocate_slots", {"request_id": run.request_id,
                                               "num_new_tokens": 1,
                                               "num_new_computed_tokens": bs,
                                               "new_computed_blocks": table[:1]})
        if kind == "unknown_request":
            ops = [("allocate_slots", {"num_new_tokens": 1}), ("get_computed_blocks", {}),
                   ("free", {}), ("preempt", {}), ("append_output_tokens", {"token_ids": [1]}),
                   ("set_num_computed_tokens", {"num_computed_tokens": 0})]
            op, extra = ops[pick % len(ops)]
            return Step(op, {"request_id": UNKNOWN_ID, **extra})
        if kind == "duplicate_request" and self.requests:
            known = self.requests[pick % len(self.requests)]
            return Step("add_request", {"request_id": known.request_id,
                                        "prompt_token_ids": [1]})
        if kind == "computed_beyond_tokens" and any_req:
            return Step("set_num_computed_tokens", {
                "request_id": any_req.request_id,
                "num_computed_tokens": self.request(any_req).num_tokens + 1})
        return None

    # -------------------------------------------------------------- own bookkeeping

    def check_bookkeeping(self) -> None:
        """Waiting and finished requests hold no blocks; running ones are running."""
        for s in self.requests:
            table = self.spec.req_to_blocks.get(s.request_id, [])
            if s.state != "running":
                assert not table, f"harness bookkeeping: {s.state} {s.request_id} holds blocks"


def start(factory: Any, config: ManagerConfig, options: RunOptions, recorder: Recorder
          ) -> ManagerHarness:
    """A manager harness over a fresh target, the fresh state judged."""
    driver = start_driver(factory, config, on_check=recorder.count_check,
                          judge_bad_input=options.checks_bad_input)
    unsupported = unsupported_bad_inputs(factory)
    kinds = tuple(k for k in BAD_INPUTS if k not in unsupported)
    return ManagerHarness(driver, recorder, options, kinds)


def simplify(step: Step) -> Iterator[Step]:
    """Simpler versions of a manager step, simplest first (for the minimizer)."""
    a = step.args
    if step.op == "add_request":
        prompt = list(a.get("prompt_token_ids", []))
        for i in range(len(prompt) - 1, -1, -1):
            if len(prompt) > 1:
                yield Step(step.op, {**a, "prompt_token_ids": prompt[:i] + prompt[i + 1:]})
        for key in ("lora_name", "cache_salt"):
            if a.get(key) is not None:
                yield Step(step.op, {**a, key: None})
    if step.op == "allocate_slots":
        for key in ("num_lookahead_tokens", "num_new_tokens"):
            value = a.get(key)
            if isinstance(value, int) and value > 0:
                for lower in sorted({0, 1, value // 2, value - 1} - {value}):
                    if lower == 0 and key == "num_lookahead_tokens":
                        yield Step(step.op, {k: v for k, v in a.items() if k != key})
                    else:
                        yield Step(step.op, {**a, key: lower})
    if step.op == "append_output_tokens":
        tokens = list(a.get("token_ids", []))
        if len(tokens) > 1:
            yield Step(step.op, {**a, "token_ids": tokens[:1]})
