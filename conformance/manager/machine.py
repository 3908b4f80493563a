"""The request-level Hypothesis state machine: the harness plays the scheduler.

It creates requests whose prompts share prefixes, admits them (``get_computed_blocks``
then ``allocate_slots``), runs chunked prefill and decode steps (appending a sampled
token whenever a request has computed all its tokens), preempts, finishes and aborts
requests, and sometimes resets the prefix cache. Every step goes through
:class:`~kvspec.conformance.manager.driver.ManagerDriver`, which checks every invariant and
compares every observation after it.

Why the arguments look the way they do (see HARNESS.md):

* prompts are a prefix of one of three fixed token sequences, two of which share their
  first four tokens, plus a short tail from a two-token alphabet: hits are common,
  partial hits too, and different prefixes end in equal blocks (which only the hash
  chain tells apart);
* block size 2 or 4 and pools of 3-10 blocks: eviction, reuse of cached blocks,
  ``None`` from ``allocate_slots`` and preemption only happen under pressure;
* a few requests carry a LoRA name or a cache salt (the empty salt among them, which
  must mean "no salt"), so identity keys are exercised against plain requests;
* bad input is one rule with a ``kind``: the target must refuse, and change nothing;
* rules pick requests by ``index % len(...)`` and are listed simplest first, so that
  shrinking deletes steps and lowers values into a short, readable sequence.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from hypothesis import strategies as st
from hypothesis import target as hypothesis_target
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from kvspec.conformance.manager.driver import ManagerConfig, ManagerDivergence, ManagerDriver
from kvspec.conformance.manager.protocol import ManagerTarget
from kvspec.conformance.pool.machine import RunStats
from kvspec.conformance.trace import Step

#: Base prompts: 0 and 1 share their first four tokens; 2 shares nothing.
PREFIXES: tuple[tuple[int, ...], ...] = (
    (1, 2, 3, 4, 5, 6, 7, 8),
    (1, 2, 3, 4, 9, 10, 11, 12),
    (13, 14, 15, 16, 17, 18, 19, 20),
)
TAIL_TOKENS = (21, 22)
SAMPLED_TOKENS = (5, 21, 22)
FILL_TOKEN = 30
"""Tokens of ``fill`` requests are ``FILL_TOKEN + 0..3``: shared with no other request
(the lookup of a fill is ignored: it recomputes, and caches duplicates, even on a hit)."""
LORAS = (None, None, None, None, None, "L1")
SALTS = (None, None, None, None, "s1", "")
MAX_TOKENS = 14
"""A request reaching this many tokens finishes (its ``max_tokens``)."""
MAX_REQUESTS = 6
"""Waiting plus running requests at most: more only dilutes the pressure on few blocks."""

BAD_INPUTS = [
    "zero_new_tokens",
    "negative_new_tokens",
    "negative_lookahead",
    "hit_length_mismatch",
    "hits_into_running_request",
    "unknown_request",
    "duplicate_request",
    "computed_beyond_tokens",
]
UNKNOWN_ID = "ghost"


def unsupported_bad_inputs(factory: Callable[..., object]) -> frozenset[str]:
    """The bad-input kinds a factory's targets are known not to refuse.

    A target that does not validate some caller mistakes (upstream trusts its scheduler)
    names them in ``factory.unsupported_bad_input``; the machine then never sends them, and
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


@dataclass
class Sched:
    """The harness's own view of one request: where it is in the scheduler's queues."""

    request_id: str
    num_tokens: int
    num_computed: int = 0


def make_manager_machine(
    factory: Callable[..., ManagerTarget],
    *,
    profile: str = "current",
    min_blocks: int = 3,
    max_blocks: int = 10,
    bad_input: bool = True,
    stats: RunStats | None = None,
    on_failure: Callable[[ManagerDivergence], None] | None = None,
    on_step: Callable[[], None] | None = None,
) -> type[RuleBasedStateMachine]:
    """A machine class that drives manager targets built by ``factory`` against the spec."""
    stats = stats if stats is not None else RunStats()
    compare_hashes = not getattr(factory, "opaque_hashes", False)
    bad_kinds = [k for k in BAD_INPUTS if k not in unsupported_bad_inputs(factory)]

    class ManagerMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.driver: ManagerDriver | None = None
            self.waiting: list[Sched] = []
            self.running: list[Sched] = []
            self.finished: list[str] = []
            self.tokens: list[str] = []  # every request added, to repeat its tokens
            self.next_id = 0
            self.peak_pressure = 0.0
            stats.examples += 1

        # -------------------------------------------------------------- plumbing

        def do(self, rule_name: str, op: str, **args: object):
            driver = self.driver
            assert driver is not None
            return stats.step(rule_name, lambda: driver.apply(Step(op, dict(args))),
                              on_step=on_step, on_failure=on_failure)

        @property
        def block_size(self) -> int:
            assert self.driver is not None
            return self.driver.config.block_size

        def has_waiting(self) -> bool:
            return bool(self.waiting)

        def has_running(self) -> bool:
            return bool(self.running)

        def has_room(self) -> bool:
            return len(self.waiting) + len(self.running) < MAX_REQUESTS

        def run_chunk(self, rule_name: str, s: Sched, num_new: int, token: int) -> None:
            """After a successful allocation: the model computes the chunk, and samples a
            token when the request has computed all its tokens (or finishes)."""
            s.num_computed += num_new
            self.do(rule_name, "set_num_computed_tokens", request_id=s.request_id,
                    num_computed_tokens=s.num_computed)
            if s.num_computed < s.num_tokens:
                return
            if s.num_tokens >= MAX_TOKENS:
                self.running.remove(s)
                self.finished.append(s.request_id)
                self.do(rule_name, "free", request_id=s.request_id)
                return
            self.do(rule_name, "append_output_tokens", request_id=s.request_id,
                    token_ids=[token])
            s.num_tokens += 1

        # -------------------------------------------------------------- setup

        @initialize(
            num_blocks=st.integers(min_blocks, max_blocks),
            block_size=st.sampled_from([2, 4]),
            enable_caching=st.sampled_from([True, True, True, False]),
        )
        def make_manager(self, num_blocks: int, block_size: int, enable_caching: bool) -> None:
            config = ManagerConfig(num_blocks, block_size, enable_caching, profile,
                                   compare_hashes=compare_hashes)

            def count(name: str) -> None:
                stats.invariant_checks[name] += 1

            try:
                self.driver = ManagerDriver(factory, config, on_check=count)
                self.driver.check()
                self.driver.compare_observations()
            except ManagerDivergence as failure:
                if on_failure:
                    on_failure(failure)
                raise

        # -------------------------------------------------------------- requests

        @precondition(has_room)
        @rule(
            prefix=st.integers(0, len(PREFIXES) - 1),
            prefix_len=st.integers(0, len(PREFIXES[0])),
            tail=st.lists(st.sampled_from(TAIL_TOKENS), max_size=3),
            lora=st.sampled_from(LORAS),
            salt=st.sampled_from(SALTS),
        )
        def add(self, prefix: int, prefix_len: int, tail: list[int], lora: str | None,
                salt: str | None) -> None:
            """A new request arrives and waits: a shared prefix plus its own tail."""
            prompt = list(PREFIXES[prefix][:prefix_len]) + tail or [TAIL_TOKENS[0]]
            self.add_prompt("add", prompt, lora, salt)

        def add_prompt(self, rule_name: str, prompt: list[int], lora: str | None,
                       salt: str | None) -> None:
            rid = f"r{self.next_id}"
            self.next_id += 1
            self.do(rule_name, "add_request", request_id=rid, prompt_token_ids=prompt,
                    lora_name=lora, cache_salt=salt)
            self.waiting.append(Sched(rid, len(prompt)))
            self.tokens.append(rid)

        @precondition(lambda self: self.has_room() and bool(self.tokens))
        @rule(index=st.integers(0, 7), cut=st.integers(0, 3),
              tail=st.lists(st.sampled_from(TAIL_TOKENS), max_size=2))
        def add_like(self, index: int, cut: int, tail: list[int]) -> None:
            """A new request repeats an earlier one's tokens (outputs too), minus ``cut``
            tokens, plus its own tail, with the same identity: a follow-up turn, whose
            whole history is a prefix hit when it is still cached."""
            self.add_follow_up("add_like", self.tokens[index % len(self.tokens)], cut, tail)

        def add_follow_up(self, rule_name: str, source: str, cut: int, tail: list[int]) -> None:
            assert self.driver is not None
            old = self.driver.requests[source]
            tokens = list(old.all_token_ids)
            prompt = tokens[: max(len(tokens) - cut, 1)] + tail
            self.add_prompt(rule_name, prompt, None if old.lora is None else old.lora.name,
                            old.cache_salt)

        @precondition(has_waiting)
        @rule(index=st.integers(0, 7), chunk=st.integers(0, 8), lookahead=st.integers(0, 2),
              token=st.sampled_from(SAMPLED_TOKENS))
        def admit(self, index: int, chunk: int, lookahead: int, token: int) -> None:
            """Schedule a waiting request: look its prefix up, then allocate a chunk.

            ``chunk == 0`` with hits adopts the hits alone (legal in ``current``, refused
            in ``classic``). ``None`` leaves the request waiting, to be looked up again.
            """
            self.schedule("admit", self.waiting[index % len(self.waiting)], chunk, lookahead,
                          token)

        def schedule(self, rule_name: str, s: Sched, chunk: int, lookahead: int,
                     token: int) -> None:
            looked = self.do(rule_name, "get_computed_blocks", request_id=s.request_id)
            hits, num_hit = looked.result
            remaining = s.num_tokens - num_hit
            num_new = min(chunk, remaining) if chunk or num_hit else 1
            out = self.do(rule_name, "allocate_slots", request_id=s.request_id,
                          num_new_tokens=num_new, num_new_computed_tokens=num_hit,
                          new_computed_blocks=list(hits), num_lookahead_tokens=lookahead)
            if out.refused is not None or out.result is None:
                return
            self.waiting.remove(s)
            self.running.append(s)
            s.num_computed = num_hit
            self.run_chunk(rule_name, s, num_new, token)

        @precondition(has_room)
        @rule(leave=st.integers(0, 3), token=st.integers(0, 3))
        def fill(self, leave: int, token: int) -> None:
            """A request of its own tokens takes all free blocks but ``leave``: the pool is
            then at the edge where capacity checks and eviction order decide everything
            (the free blocks left are the most recently freed cached ones)."""
            self.fill_pool("fill", leave, token)

        def fill_pool(self, rule_name: str, leave: int, token: int) -> None:
            assert self.driver is not None
            num_blocks = len(self.driver.spec.pool.free_queue) - leave
            if num_blocks <= 0:
                return
            prompt = [FILL_TOKEN + token] * (num_blocks * self.block_size)
            self.add_prompt(rule_name, prompt, None, None)
            s = self.waiting[-1]
            self.do(rule_name, "get_computed_blocks", request_id=s.request_id)
            out = self.do(rule_name, "allocate_slots", request_id=s.request_id,
                          num_new_tokens=s.num_tokens)
            if out.refused is None and out.result is not None:
                self.waiting.remove(s)
                self.running.append(s)
                self.run_chunk(rule_name, s, s.num_tokens, SAMPLED_TOKENS[0])

        @precondition(lambda self: bool(self.finished)
                      and len(self.waiting) + len(self.running) < MAX_REQUESTS - 1)
        @rule(index=st.integers(0, 7), leave=st.integers(0, 5), cut=st.integers(0, 3),
              chunk=st.integers(0, 8), lookahead=st.integers(0, 2),
              token=st.sampled_from(SAMPLED_TOKENS))
        def follow_up(self, index: int, leave: int, cut: int, chunk: int, lookahead: int,
                      token: int) -> None:
            """A finished request's next turn arrives while the pool is busy.

            Everything but ``leave`` free blocks is taken, then the turn (the old tokens
            minus ``cut``) is admitted. Its hits are the old request's blocks, at ref count
            0 near the free queue's end: where the capacity check must count them, and
            they must be touched before any new block is popped.
            """
            source = self.finished[index % len(self.finished)]
            self.fill_pool("follow_up", leave, 0)
            self.add_follow_up("follow_up", source, cut, [])
            self.schedule("follow_up", self.waiting[-1], chunk, lookahead, token)

        @precondition(has_waiting)
        @rule(index=st.integers(0, 7))
        def look(self, index: int) -> None:
            """Look a waiting request up but schedule something else (no budget left)."""
            s = self.waiting[index % len(self.waiting)]
            self.do("look", "get_computed_blocks", request_id=s.request_id)

        @precondition(has_running)
        @rule(index=st.integers(0, 7), chunk=st.integers(1, 8), lookahead=st.integers(0, 2),
              token=st.sampled_from(SAMPLED_TOKENS))
        def step(self, index: int, chunk: int, lookahead: int, token: int) -> None:
            """One step of a running request: a prefill chunk, or one decode token."""
            s = self.running[index % len(self.running)]
            num_new = min(chunk, s.num_tokens - s.num_computed)
            out = self.do("step", "allocate_slots", request_id=s.request_id,
                          num_new_tokens=num_new, num_lookahead_tokens=lookahead)
            if out.refused is None and out.result is not None:
                self.run_chunk("step", s, num_new, token)

        @precondition(has_running)
        @rule(index=st.integers(0, 7))
        def preempt(self, index: int) -> None:
            """Make room: free a running request and requeue it with nothing computed."""
            s = self.running.pop(index % len(self.running))
            self.do("preempt", "preempt", request_id=s.request_id)
            s.num_computed = 0
            self.waiting.insert(0, s)

        @precondition(has_running)
        @rule(index=st.integers(0, 7))
        def finish(self, index: int) -> None:
            """A running request finishes (stop token): its table is freed, tail first."""
            s = self.running.pop(index % len(self.running))
            self.finished.append(s.request_id)
            self.do("finish", "free", request_id=s.request_id)

        @precondition(has_waiting)
        @rule(index=st.integers(0, 7))
        def abort_waiting(self, index: int) -> None:
            """A waiting request is aborted: freeing a request without blocks is a no-op."""
            s = self.waiting.pop(index % len(self.waiting))
            self.finished.append(s.request_id)
            self.do("abort_waiting", "free", request_id=s.request_id)

        @precondition(lambda self: bool(self.finished))
        @rule(index=st.integers(0, 7))
        def free_again(self, index: int) -> None:
            """A finished request is freed a second time (an abort racing the finish)."""
            self.do("free_again", "free",
                    request_id=self.finished[index % len(self.finished)])

        @precondition(lambda self: self.driver is not None and any(
            h is not None for h in self.driver.spec.pool.block_hash))
        @rule()
        def reset(self) -> None:
            """Reset the prefix cache (refused with False while any block is held)."""
            self.do("reset", "reset_prefix_cache")

        # -------------------------------------------------------------- bad input

        @precondition(lambda self: bad_input and bool(bad_kinds))
        @rule(kind=st.sampled_from(bad_kinds or BAD_INPUTS), pick=st.integers(0, 7))
        def bad(self, kind: str, pick: int) -> None:
            """An operation the spec refuses: the target must raise and change nothing."""
            step = self.bad_step(kind, pick)
            if step is not None:
                self.do(f"bad:{kind}", step.op, **step.args)

        def bad_step(self, kind: str, pick: int) -> Step | None:
            known = [s.request_id for s in self.waiting + self.running] + self.finished
            running = self.running[pick % len(self.running)] if self.running else None
            waiting = self.waiting[pick % len(self.waiting)] if self.waiting else None
            any_req = running or waiting
            bs = self.block_size
            if kind == "zero_new_tokens" and any_req:
                return Step("allocate_slots", {"request_id": any_req.request_id,
                                               "num_new_tokens": 0})
            if kind == "negative_new_tokens" and any_req:
                return Step("allocate_slots", {"request_id": any_req.request_id,
                                               "num_new_tokens": -1})
            if kind == "negative_lookahead" and any_req:
                return Step("allocate_slots", {"request_id": any_req.request_id,
                                               "num_new_tokens": 1,
                                               "num_lookahead_tokens": -1})
            if kind == "hit_length_mismatch" and waiting:
                return Step("allocate_slots", {"request_id": waiting.request_id,
                                               "num_new_tokens": 1,
                                               "num_new_computed_tokens": bs,
                                               "new_computed_blocks": []})
            if kind == "hits_into_running_request" and running:
                assert self.driver is not None
                table = self.driver.spec.req_to_blocks.get(running.request_id, [])
                if table:
                    return Step("allocate_slots", {"request_id": running.request_id,
                                                   "num_new_tokens": 1,
                                                   "num_new_computed_tokens": bs,
                                                   "new_computed_blocks": table[:1]})
            if kind == "unknown_request":
                ops = [("allocate_slots", {"num_new_tokens": 1}), ("get_computed_blocks", {}),
                       ("free", {}), ("preempt", {}), ("append_output_tokens",
                                                       {"token_ids": [1]}),
                       ("set_num_computed_tokens", {"num_computed_tokens": 0})]
                op, extra = ops[pick % len(ops)]
                return Step(op, {"request_id": UNKNOWN_ID, **extra})
            if kind == "duplicate_request" and known:
                return Step("add_request", {"request_id": known[pick % len(known)],
                                            "prompt_token_ids": [1]})
            if kind == "computed_beyond_tokens" and any_req:
                return Step("set_num_computed_tokens", {"request_id": any_req.request_id,
                                                        "num_computed_tokens":
                                                        any_req.num_tokens + 1})
            return None

        # -------------------------------------------------------------- checks

        @invariant()
        def track_pressure(self) -> None:
            """Remember the fullest the pool got; ``teardown`` reports it to Hypothesis."""
            if self.driver is not None:
                spec = self.driver.spec.pool
                used = 1.0 - len(spec.free_queue) / max(1, spec.num_blocks - 1)
                self.peak_pressure = max(self.peak_pressure, used)

        def teardown(self) -> None:
            # Steer generation toward full pools, where eviction and preemption bugs live.
            hypothesis_target(self.peak_pressure, label="peak pool usage")

        @invariant()
        def harness_agrees_with_driver(self) -> None:
            """The machine's own bookkeeping: running requests hold blocks, others none."""
            if self.driver is None:
                return
            for s in self.running:
                assert self.driver.requests[s.request_id].num_computed_tokens == \
                    s.num_computed, f"harness bookkeeping: {s.request_id} computed count"
            for s in self.waiting:
                assert not self.driver.spec.req_to_blocks.get(s.request_id), (
                    f"harness bookkeeping: waiting {s.request_id} holds blocks")

    ManagerMachine.__name__ = "ManagerMachine"
    ManagerMachine.__qualname__ = "ManagerMachine"
    return ManagerMachine
