"""The hybrid level's harness: the scheduler of a hybrid model, with a KV connector.

It adds requests whose prompts share prefixes, looks them up and admits them with the hits
and, sometimes, tokens a KV connector supplies past the hit (``num_external_computed_tokens``),
runs prefill chunks and decode steps, preempts, finishes and aborts, and fills the pool so
that admissions meet evictable hits at the front of the free queue. Every step goes
through the :class:`~kvspec.conformance.hybrid.driver.HybridDriver`, which judges it.

Why the arguments look the way they do:

* prompts are a prefix of one of three token sequences (two share their first eight
  tokens) plus a short tail, so hits, partial hits and hits that one group serves and
  another does not are common; follow-up turns repeat a finished request's tokens;
* requests sharing *any* number of an earlier request's tokens (a system prompt, an
  earlier turn) arrive several at a time and are looked up: the groups' windows give back
  different numbers of blocks, so which groups serve a shared prefix changes along it,
  and a lookup sees a hit cut short by one group only where its length ends at such a
  place; lookups at several lengths find those places;
* pools of 6-40 blocks, 2-4 tokens per block and windows of 2-5 tokens: windows slide
  within a short request, and pressure makes eviction, reuse and ``None`` common;
* external tokens are at most the tokens left before the last one (the connector never
  supplies the token whose logits are wanted), chosen from 0-5;
* moves pick requests by ``index % len(...)`` and are listed simplest first.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, replace
from typing import Any

from kvspec.conformance.hybrid.driver import HybridConfig, HybridDriver, start_driver
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
from kvspec.conformance.trace import Step
from kvspec.spec import hybrid as sh

PREFIXES: tuple[tuple[int, ...], ...] = (
    (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12),
    (1, 2, 3, 4, 5, 6, 7, 8, 13, 14, 15, 16),
    (17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28),
)
TAIL_TOKENS = (31, 32)
SAMPLED_TOKENS = (5, 31, 32)
FILL_TOKEN = 40
MAX_TOKENS = 20
MAX_REQUESTS = 5

SITUATIONS = (
    "hit-in-every-group",
    "hit-on-evictable-block",
    "sliding-hit-with-nulls",
    "hit-cut-by-another-group",
    "window-hit-cut-by-a-later-group",
    "fixed-point-second-pass",
    "external-tokens",
    "hit-in-reach-of-connector-blocks",
    "window-slid",
    "cannot-schedule",
    "preemption",
)


@dataclass(frozen=True)
class Sched:
    request_id: str
    state: str  # "waiting", "running" or "finished"
    pending: int = 0


def _has(state: str) -> Callable[[HybridHarness], bool]:
    return lambda h: bool(h.with_state(state))


def _prompt(rng: random.Random) -> tuple[int, ...]:
    prefix = PREFIXES[rng.randrange(len(PREFIXES))][: rng.randint(0, len(PREFIXES[0]))]
    return prefix + sequences(TAIL_TOKENS, 0, 3)(rng) or (TAIL_TOKENS[0],)


INDEX = Domain(integers(0, 7))
TOKEN = Domain(one_of(SAMPLED_TOKENS))
LOOKAHEAD = Domain(integers(0, 2))
#: How many of an earlier request's tokens a new one shares: any number (taken modulo its
#: length), or (negative) all but a few, where its windows gave back blocks last.
SHARED_LENGTHS = (*range(24), *range(-6, 0), *range(-6, 0))
EXTERNAL = Domain(one_of((0, 0, 1, 2, 3, 5)))
CHUNK = Domain(integers(1, 12))


class HybridHarness(Harness):
    """The scheduler over a :class:`HybridDriver`; see the module docstring."""

    driver: HybridDriver

    def __init__(self, driver: HybridDriver, recorder: Recorder) -> None:
        super().__init__(driver, recorder)
        self.requests: list[Sched] = []

    def key(self) -> Hashable:
        return tuple(self.requests)

    def copy_bookkeeping(self) -> HybridHarness:
        twin = self.shallow_copy()
        twin.requests = list(self.requests)
        return twin

    @property
    def spec(self) -> sh.HybridState:
        return self.driver.spec

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

    def has_room(self) -> bool:
        return sum(1 for s in self.requests if s.state != "finished") < MAX_REQUESTS

    def idle_running(self) -> list[Sched]:
        return [s for s in self.with_state("running") if not s.pending]

    # -------------------------------------------------------------- moves

    @move(prompt=Domain(_prompt), weight=3, enabled=has_room)
    def add(self, prompt: tuple[int, ...]) -> None:
        """A new request arrives and waits."""
        rid = f"r{len(self.requests)}"
        if self.do("add_request", request_id=rid, prompt_token_ids=list(prompt)).refused is None:
            self.requests.append(Sched(rid, "waiting"))

    @move(index=INDEX, cut=Domain(integers(0, 3)), tail=Domain(sequences(TAIL_TOKENS, 0, 2)),
          weight=2, enabled=lambda h: h.has_room() and bool(h.requests))
    def add_like(self, index: int, cut: int, tail: tuple[int, ...]) -> None:
        """A follow-up turn: an earlier request's tokens, minus ``cut``, plus a tail."""
        old = self.request(self.requests[index % len(self.requests)])
        tokens = list(old.all_token_ids)
        self.add(tuple(tokens[: max(len(tokens) - cut, 1)]) + tail)

    @move(index=INDEX, chunk=CHUNK, lookahead=LOOKAHEAD, external=EXTERNAL, weight=4,
          enabled=_has("waiting"))
    def admit(self, index: int, chunk: int, lookahead: int, external: int) -> None:
        """Look a waiting request up, then admit it with its hits, ``external`` tokens from
        the connector past the hit, and a chunk of new tokens. None leaves it waiting."""
        s = self.pick("waiting", index)
        req = self.request(s)
        out = self.do("get_computed_blocks", request_id=s.request_id)
        if out.refused is not None or out.result is None:
            return
        hits, num_hit = out.result
        self._note_hits(hits, num_hit)
        self._note_search(req, hits, num_hit)
        external = max(0, min(external, req.num_tokens - 1 - num_hit))
        num_new = max(1, min(chunk, req.num_tokens - num_hit - external))
        args: dict[str, Any] = {"num_new_tokens": num_new}
        if num_hit:
            args.update(num_new_computed_tokens=num_hit,
                        new_computed_blocks=[list(g) for g in hits])
        if lookahead:
            args["num_lookahead_tokens"] = lookahead
        if external:
            args["num_external_computed_tokens"] = external
            self.note("external-tokens")
        in_reach = external and self._hit_in_reach(hits, num_hit + external)
        if self.allocate(s, **args):
            self.update(s, state="running", pending=num_hit + external + num_new)
            if in_reach:
                self.note("hit-in-reach-of-connector-blocks")

    def _note_hits(self, hits: list[list[int]], num_hit: int) -> None:
        if not num_hit:
            return
        self.note("hit-in-every-group")
        pool = self.spec.pool
        if any(pool.ref_cnt[b] == 0 for g in hits for b in g if b != sh.NULL_BLOCK):
            self.note("hit-on-evictable-block")
        if any(sh.NULL_BLOCK in g for g in hits):
            self.note("sliding-hit-with-nulls")

    def _hit_in_reach(self, hits: list[list[int]], computed: int) -> bool:
        """Were the groups admitted one after another, each adopting its hits and then
        taking blocks for the connector's tokens, a group would take another group's hit
        (at ref count 0, still in the free queue) before that group adopts it. Adopting
        every group's hits first is what keeps it."""
        pool, groups = self.spec.pool, self.spec.groups
        queue = list(pool.free_queue)
        kept = [[b for b in h[sh.skipped_blocks(g, computed):] if b != sh.NULL_BLOCK]
                for g, h in zip(groups, hits, strict=True)]
        for gid, g in enumerate(groups):
            queue = [b for b in queue if b not in kept[gid]]
            later = {b for k in kept[gid + 1:] for b in k}
            skip = sh.skipped_blocks(g, computed)
            h = hits[gid]
            taken = -(-computed // g.block_size) - max(skip, len(h))
            if taken > 0:
                if later & set(queue[:taken]):
                    return True
                queue = queue[taken:]
        return False

    def _note_search(self, req: Any, hits: list[list[int]], num_hit: int) -> None:
        """How hard the lookup was (see :func:`search_passes`): a target whose search over
        the groups stops early is wrong only in the last two situations."""
        m = self.spec
        if not m.pool.enable_caching or len(m.groups) < 2:
            return
        cap = max(req.num_tokens - 1, 0)
        if any(longest_group_hit(m, req, gid, cap) > num_hit for gid in range(len(m.groups))):
            self.note("hit-cut-by-another-group")
        changes, first_pass = search_passes(m, req, cap)
        for gid, length in first_pass.items():
            g = m.groups[gid]
            if g.kind == sh.SLIDING and length > num_hit:
                longer = sh.group_hit(m, req, gid, length) or []
                if longer[:num_hit // g.block_size] != list(hits[gid]):
                    self.note("window-hit-cut-by-a-later-group")
        if changes >= 2:
            self.note("fixed-point-second-pass")

    @move(index=INDEX, chunk=CHUNK, lookahead=LOOKAHEAD, weight=4,
          enabled=lambda h: bool(h.idle_running()))
    def step(self, index: int, chunk: int, lookahead: int) -> None:
        """One step of a running request: a prefill chunk or one decode token."""
        idle = self.idle_running()
        s = idle[index % len(idle)]
        req = self.request(s)
        num_new = min(chunk, req.num_tokens - req.num_computed_tokens)
        if num_new <= 0:
            return
        args = {"num_lookahead_tokens": lookahead} if lookahead else {}
        if self.allocate(s, num_new_tokens=num_new, **args):
            self.update(s, pending=num_new)

    def allocate(self, s: Sched, **args: Any) -> bool:
        nulls = sum(t.count(sh.NULL_BLOCK) for t in sh.get_block_ids(self.spec, s.request_id))
        out = self.do("allocate_slots", request_id=s.request_id, **args)
        if sum(t.count(sh.NULL_BLOCK) for t in sh.get_block_ids(self.spec, s.request_id)) > nulls:
            self.note("window-slid")
        if out.refused is None and out.result is None:
            self.note("cannot-schedule")
        return out.refused is None and out.result is not None

    @move(index=INDEX, weight=4, enabled=lambda h: any(s.pending for s in h.requests))
    def compute(self, index: int) -> None:
        """The model (and the connector) computed what was scheduled."""
        pending = [s for s in self.requests if s.pending]
        s = pending[index % len(pending)]
        req = self.request(s)
        done = min(req.num_computed_tokens + s.pending, req.num_tokens)
        if self.do("set_num_computed_tokens", request_id=s.request_id,
                   num_computed_tokens=done).refused is None:
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
        """A running request finishes: every group's table is freed, tail first."""
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
        """A waiting request is aborted (freeing a request without blocks is a no-op)."""
        s = self.pick("waiting", index)
        self.update(s, state="finished")
        self.do("free", request_id=s.request_id)

    @move(enabled=lambda h: any(x is not None for x in h.spec.pool.block_hash))
    def reset(self) -> None:
        """Reset the prefix cache (False while any block is held)."""
        self.do("reset_prefix_cache")

    # -------------------------------------------------------------- composite flows

    @move(index=INDEX, chunk=CHUNK, lookahead=LOOKAHEAD, external=EXTERNAL, token=TOKEN,
          weight=6, enabled=_has("waiting"))
    def schedule(self, index: int, chunk: int, lookahead: int, external: int,
                 token: int) -> None:
        """A scheduler's whole turn for a waiting request: admit, compute, sample."""
        s = self.pick("waiting", index)
        self.admit(self.with_state("waiting").index(s), chunk, lookahead, external)
        self.run_to_end_of_step(s.request_id, token)

    @move(index=INDEX, chunk=CHUNK, lookahead=LOOKAHEAD, token=TOKEN, weight=6,
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

    @move(leave=Domain(integers(0, 4)), token=Domain(integers(0, 3)), weight=2,
          enabled=has_room)
    def fill(self, leave: int, token: int) -> None:
        """A request of its own tokens takes all free blocks but about ``leave``: the pool
        is then at the edge where capacity checks and eviction order decide everything."""
        free = len(self.spec.pool.free_queue) - leave
        per_token = sum(1 / g.block_size for g in self.spec.groups)
        num_tokens = int(free / per_token)
        if num_tokens <= 0:
            return
        self.add((FILL_TOKEN + token,) * num_tokens)
        self.schedule(len(self.with_state("waiting")) - 1, num_tokens, 0, 0,
                      SAMPLED_TOKENS[0])

    @move(index=INDEX, leave=Domain(integers(0, 6)), cut=Domain(integers(0, 3)),
          chunk=CHUNK, external=EXTERNAL, token=TOKEN, release=Domain(one_of((False, True))),
          weight=3,
          enabled=lambda h: bool(h.with_state("finished")) and
          sum(1 for s in h.requests if s.state != "finished") < MAX_REQUESTS - 1)
    def follow_up(self, index: int, leave: int, cut: int, chunk: int, external: int,
                  token: int, release: bool) -> None:
        """A finished request's next turn arrives while the pool is busy: its hits are
        the old request's blocks, at ref count 0 near the free queue's end. With
        ``release`` the request that filled the pool finishes first, so its blocks queue
        behind the old request's, whose hits then stand at the front of the free queue
        (where an admission's own new blocks are popped)."""
        source = self.pick("finished", index)
        filled = len(self.requests)
        self.fill(leave, 0)
        if release and len(self.requests) > filled and self.requests[-1].state == "running":
            self.finish(self.with_state("running").index(self.requests[-1]))
        if not self.has_room():
            return
        self.add_like(self.requests.index(source), cut, ())
        if self.requests[-1].state == "waiting":
            self.schedule(len(self.with_state("waiting")) - 1, chunk, 0, external, token)


    @move(index=INDEX, shared=Domain(sequences(SHARED_LENGTHS, 1, 4)),
          tail=Domain(sequences(TAIL_TOKENS, 0, 2)), chunk=CHUNK, external=EXTERNAL,
          token=TOKEN, weight=3, enabled=lambda h: h.has_room() and bool(h.requests))
    def branch(self, index: int, shared: tuple[int, ...], tail: tuple[int, ...], chunk: int,
               external: int, token: int) -> None:
        """Requests sharing the first tokens of an earlier one, each a different number of
        them (a system prompt, an earlier turn of a conversation), arrive together and are
        looked up; all but the last leave before admission, the last is scheduled. Their
        lookups meet the earlier request's cached prefix where it is now, at several
        lengths: the windows have given back their oldest blocks, each group a different
        number of them, and eviction took some, so groups may serve different parts of it
        and the hit search must come back to a group after another cut the hit short."""
        old = self.request(self.requests[index % len(self.requests)])
        tokens = tuple(old.all_token_ids)
        for i, n in enumerate(shared):
            keep = n % len(tokens) + 1 if n >= 0 else max(len(tokens) + n, 1)
            self.add(tokens[:keep] + tail)
            if self.requests[-1].state != "waiting":
                return
            waiting = len(self.with_state("waiting")) - 1
            if i < len(shared) - 1:
                s = self.requests[-1]
                out = self.do("get_computed_blocks", request_id=s.request_id)
                if out.refused is None and out.result is not None:
                    self._note_hits(*out.result)
                    self._note_search(self.request(s), *out.result)
                self.abort(waiting)
            else:
                self.schedule(waiting, chunk, 0, external, token)


def longest_group_hit(m: sh.HybridState, req: Any, group_id: int, max_length: int) -> int:
    """The longest hit, at most ``max_length`` tokens and a multiple of the lcm, that group
    ``group_id`` alone can serve (by the spec's :func:`~kvspec.spec.hybrid.group_hit`)."""
    step = m.alignment
    for length in range(max_length - max_length % step, 0, -step):
        if sh.group_hit(m, req, group_id, length) is not None:
            return length
    return 0


def search_passes(m: sh.HybridState, req: Any, max_length: int) -> tuple[int, dict[int, int]]:
    """The hit search as upstream runs it: passes over the groups (full attention first,
    then by id), each group cutting the length to the longest it alone serves, until a
    pass changes nothing. Returns how many passes changed the length (2 or more: one pass
    is not enough) and, per group, the length it served in the first pass (a sliding
    group that served more than the final hit must search again: its window then reads
    other blocks)."""
    order = sorted(range(len(m.groups)), key=lambda gid: m.groups[gid].kind != sh.FULL)
    length, changes, first_pass = max_length - max_length % m.alignment, 0, {}
    while True:
        new = length
        for gid in order:
            new = longest_group_hit(m, req, gid, new)
            first_pass.setdefault(gid, new)
        if new == length:
            return changes, first_pass
        length, changes = new, changes + 1


def start(factory: Any, config: HybridConfig, options: RunOptions,
          recorder: Recorder) -> HybridHarness:
    """A hybrid harness over a fresh target, the fresh state judged."""
    driver = start_driver(factory, config, on_check=recorder.count_check,
                          judge_bad_input=options.checks_bad_input)
    return HybridHarness(driver, recorder)


def simplify(step: Step) -> Iterator[Step]:
    """Simpler versions of a hybrid step, simplest first (for the minimizer)."""
    a = step.args
    if step.op == "add_request":
        prompt = list(a.get("prompt_token_ids", []))
        for i in range(len(prompt) - 1, -1, -1):
            if len(prompt) > 1:
                yield Step(step.op, {**a, "prompt_token_ids": prompt[:i] + prompt[i + 1:]})
    if step.op == "allocate_slots":
        for key in ("num_lookahead_tokens", "num_external_computed_tokens", "num_new_tokens"):
            value = a.get(key)
            if isinstance(value, int) and value > 0:
                for lower in sorted({0, 1, value // 2, value - 1} - {value}):
                    if lower == 0 and key != "num_new_tokens":
                        yield Step(step.op, {k: v for k, v in a.items() if k != key})
                    else:
                        yield Step(step.op, {**a, key: lower})
