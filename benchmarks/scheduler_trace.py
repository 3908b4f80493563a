"""The manager comparison of ``kvspec bench upstream``: one recorded scheduler trace, two managers.

A scheduler's life of requests is recorded once against kvspec's ``KVCacheManager``
(:func:`record_schedule`) and replayed on it and on upstream vLLM 0.33.0's ``KVCacheManager``
by one loop (:func:`replay`) that calls each manager directly.

The request mix
    Requests share one of a few system prompts (Zipf-like popularity), add their own user
    tokens and then generate output tokens. The scheduler runs up to ``max_running`` requests;
    each step it admits waiting requests (``get_computed_blocks``, then ``allocate_slots``
    adopting the hits for the first prefill chunk), runs every other request one chunk of its
    prefill (at most ``chunk_tokens``) or one decode token (``allocate_slots``), and frees the
    requests that finished (``free``). The pool is large enough that no allocation fails, and
    small enough that freed cached blocks are evicted by reuse.

What is timed
    Only the manager calls, and the scheduler's one update per call
    (``request.num_computed_tokens``). Each request is built with all its tokens, prompt and
    output, outside the timing: hashing a block is the request's work in both libraries, not
    the manager's, and doing it up front keeps it out of both timings alike. Upstream's
    scheduler records prefix-cache statistics after an admission
    (``record_prefix_cache_stats``), which kvspec's manager does inside ``allocate_slots``, so
    the replay calls it on upstream's side: both sides count the same statistics.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from kvspec.benchmarks._harness import CPU_CLOCK, Clock, Run, measure_interleaved
from kvspec.benchmarks.comparison import DEFAULT_REPEATS, Comparison, check_hits

# An event: ("admit", request index, prefill tokens, hit tokens recorded),
# ("run", request index, tokens, 0) or ("free", request index, 0, 0).
Event = tuple[str, int, int, int]


@dataclass(frozen=True)
class SchedulerShape:
    """Sizes of a scheduler trace; the defaults give about 68,000 manager calls."""

    num_blocks: int = 4096
    block_size: int = 16
    num_prompts: int = 8
    prompt_tokens: tuple[int, int] = (64, 1024)  # min, max tokens of a shared system prompt
    user_tokens: tuple[int, int] = (16, 256)  # min, max tokens of a request's own prompt
    output_tokens: tuple[int, int] = (16, 112)  # min, max tokens it generates
    max_running: int = 32
    chunk_tokens: int = 512
    num_requests: int = 1000
    seed: int = 0


DEFAULT_SHAPE = SchedulerShape()
QUICK_SHAPE = SchedulerShape(num_blocks=512, num_prompts=4, prompt_tokens=(32, 256),
                             output_tokens=(8, 32), max_running=8, num_requests=60)


def shape_for(num_requests: int | None, seed: int, *, quick: bool = False) -> SchedulerShape:
    base = QUICK_SHAPE if quick else DEFAULT_SHAPE
    return replace(base, num_requests=num_requests or base.num_requests, seed=seed)


@dataclass(frozen=True)
class SchedulerTrace:
    """The requests' tokens, the recorded events and what they add up to."""

    shape: SchedulerShape
    tokens: tuple[tuple[int, ...], ...]  # per request: prompt and output tokens
    events: tuple[Event, ...]

    def counts(self) -> dict[str, int]:
        out = {"admit": 0, "run": 0, "free": 0}
        for event in self.events:
            out[event[0]] += 1
        return out

    @property
    def calls(self) -> int:
        """Manager calls of one replay: an admission is a lookup and an allocation."""
        counts = self.counts()
        return 2 * counts["admit"] + counts["run"] + counts["free"]

    @property
    def hit_tokens(self) -> int:
        return sum(event[3] for event in self.events if event[0] == "admit")


def _request_tokens(shape: SchedulerShape) -> tuple[list[tuple[int, ...]], list[int]]:
    """Every request's tokens and prompt length, deterministic in the seed."""
    rng = random.Random(shape.seed)
    vocab = 32_000
    prompts = [
        [rng.randrange(vocab) for _ in range(rng.randint(*shape.prompt_tokens))]
        for _ in range(shape.num_prompts)
    ]
    weights = [1.0 / (k + 1) for k in range(shape.num_prompts)]
    tokens: list[tuple[int, ...]] = []
    prompt_lengths: list[int] = []
    for _ in range(shape.num_requests):
        prompt = rng.choices(prompts, weights)[0] + [
            rng.randrange(vocab) for _ in range(rng.randint(*shape.user_tokens))
        ]
        output = [rng.randrange(vocab) for _ in range(rng.randint(*shape.output_tokens))]
        tokens.append((*prompt, *output))
        prompt_lengths.append(len(prompt))
    return tokens, prompt_lengths


def record_schedule(shape: SchedulerShape) -> SchedulerTrace:
    """Play the scheduler against kvspec's manager and record what it asked of it."""
    from kvspec.conformance.manager.targets import ImplManager

    tokens, prompt_lengths = _request_tokens(shape)
    target = ImplManager(shape.num_blocks, shape.block_size)
    manager = target.manager
    events: list[Event] = []
    waiting = deque(range(shape.num_requests))
    running: list[int] = []
    while waiting or running:
        admitted: list[int] = []
        while waiting and len(running) + len(admitted) < shape.max_running:
            index = waiting.popleft()
            target.add_request(str(index), tokens[index])
            request = target.requests[str(index)]
            hits, num_hit_tokens = manager.get_computed_blocks(request)
            chunk = min(shape.chunk_tokens, prompt_lengths[index] - num_hit_tokens)
            if manager.allocate_slots(request, chunk, num_hit_tokens, hits) is None:
                raise ValueError(f"record_schedule: admission of request {index} failed; "
                                 "expected a pool large enough for max_running requests")
            request.num_computed_tokens = num_hit_tokens + chunk
            events.append(("admit", index, chunk, num_hit_tokens))
            admitted.append(index)
        still_running: list[int] = []
        for index in running:
            request = target.requests[str(index)]
            computed = request.num_computed_tokens
            if computed == len(tokens[index]):
                manager.free(request)
                events.append(("free", index, 0, 0))
                continue
            step = min(shape.chunk_tokens, prompt_lengths[index] - computed)
            step = step if step > 0 else 1
            if manager.allocate_slots(request, step) is None:
                raise ValueError(f"record_schedule: request {index} ran out of blocks; "
                                 "expected a pool large enough for max_running requests")
            request.num_computed_tokens = computed + step
            events.append(("run", index, step, 0))
            still_running.append(index)
        running = still_running + admitted
    return SchedulerTrace(shape, tuple(tokens), tuple(events))


def replay(
    manager: Any,
    requests: Sequence[Any],
    events: Sequence[Event],
    record_stats: Callable[[Any, int], None] | None = None,
    hits_out: list[int] | None = None,
) -> None:
    """Drive ``manager`` (kvspec's or upstream's) through ``events``: the timed loop.

    ``record_stats`` is upstream's scheduler-side statistics call (None for kvspec, whose
    ``allocate_slots`` records them). With ``hits_out``, every admission's hit tokens are
    appended to it.
    """
    get_computed_blocks, allocate_slots = manager.get_computed_blocks, manager.allocate_slots
    free = manager.free
    for kind, index, num_tokens, _ in events:
        request = requests[index]
        if kind == "run":
            allocate_slots(request, num_tokens)
            request.num_computed_tokens += num_tokens
        elif kind == "admit":
            found = get_computed_blocks(request)
            num_hit_tokens = found[1]
            allocate_slots(request, num_tokens, num_hit_tokens, found[0])
            if record_stats is not None:
                record_stats(request, num_hit_tokens)
            request.num_computed_tokens = num_hit_tokens + num_tokens
            if hits_out is not None:
                hits_out.append(num_hit_tokens)
        else:
            free(request)


# ------------------------------------------------------------------ the two managers


@dataclass(frozen=True)
class ManagerContender:
    """One library's manager: how to build it with its requests, and what it reports."""

    label: str
    make_target: Callable[[int, int], Any]  # an adapter holding .manager and .requests
    upstream: bool

    def build(self, trace: SchedulerTrace) -> tuple[Any, list[Any]]:
        """A fresh manager and the trace's requests hashed for it (untimed)."""
        target = self.make_target(trace.shape.num_blocks, trace.shape.block_size)
        for index, tokens in enumerate(trace.tokens):
            target.add_request(str(index), tokens)
        return target.manager, [target.requests[str(i)] for i in range(len(trace.tokens))]

    def record_stats(self, manager: Any) -> Callable[[Any, int], None] | None:
        return manager.record_prefix_cache_stats if self.upstream else None

    def end_state(self, manager: Any, num_requests: int) -> dict[str, object]:
        from kvspec.conformance.manager.protocol import STATS_FIELDS

        pool = manager.block_pool
        stats = manager.prefix_cache_stats if self.upstream else manager.get_prefix_cache_stats()
        tables = {}
        for index in range(num_requests):
            ids = manager.get_block_ids(str(index))
            ids = list(ids[0]) if self.upstream else ids
            if ids:
                tables[index] = ids
        return {
            "ref_cnt": [b.ref_cnt for b in pool.blocks],
            "block_hash": [None if b.block_hash is None else bytes(b.block_hash[:-4])
                           for b in pool.blocks],
            "free_queue": [b.block_id for b in pool.free_block_queue.get_all_free_blocks()],
            "tables": tables,
            "stats": tuple(int(getattr(stats, name)) for name in STATS_FIELDS),
        }


def _impl_target(num_blocks: int, block_size: int) -> Any:
    from kvspec.conformance.manager.targets import ImplManager

    return ImplManager(num_blocks, block_size)


def _vllm_target(num_blocks: int, block_size: int) -> Any:
    from kvspec.conformance.upstream.vllm_manager import VllmManager

    return VllmManager(num_blocks, block_size)


def manager_contenders() -> dict[str, ManagerContender]:
    return {
        "impl": ManagerContender("kvspec impl.KVCacheManager", _impl_target, upstream=False),
        "vllm": ManagerContender("vLLM 0.33.0 KVCacheManager", _vllm_target, upstream=True),
    }


def replay_checked(contender: ManagerContender, trace: SchedulerTrace) -> dict[str, object]:
    """Replay once untimed; every admission must hit as recorded. Returns the end state."""
    manager, requests = contender.build(trace)
    hits: list[int] = []
    expected = [event[3] for event in trace.events if event[0] == "admit"]
    try:
        replay(manager, requests, trace.events, contender.record_stats(manager), hits)
    except Exception:
        check_hits(contender.label, hits, expected)  # a divergence explains the failure
        raise
    check_hits(contender.label, hits, expected)
    return contender.end_state(manager, len(trace.tokens))


def compare_managers(
    trace: SchedulerTrace, *, repeats: int = DEFAULT_REPEATS, gc_enabled: bool = True,
    clock: Clock = CPU_CLOCK,
) -> Comparison:
    """Check both managers on ``trace``, then time them."""
    contenders = manager_contenders()
    ends = {name: replay_checked(c, trace) for name, c in contenders.items()}
    if ends["impl"] != ends["vllm"]:
        raise AssertionError(
            "compare_managers: kvspec's manager and upstream's ended the trace in different "
            "states; the timed runs would not do the same work "
            "(run kvspec check --level manager --target vllm)"
        )

    def setup_for(contender: ManagerContender) -> Callable[[int], Run]:
        def setup(ops: int) -> Run:
            manager, requests = contender.build(trace)
            record_stats = contender.record_stats(manager)
            return lambda: replay(manager, requests, trace.events, record_stats)

        return setup

    measured = measure_interleaved(
        {name: setup_for(c) for name, c in contenders.items()},
        repeats=repeats, ops=trace.calls, gc_enabled=gc_enabled, clock=clock,
    )
    return Comparison("manager", "one recorded scheduler trace, the same calls on both sides",
                      dict.fromkeys(contenders, trace.calls),
                      {n: c.label for n, c in contenders.items()}, measured)


def format_trace(trace: SchedulerTrace) -> str:
    shape = trace.shape
    counts = trace.counts()
    prompt_tokens = sum(len(t) for t in trace.tokens)
    return (
        f"scheduler trace: {shape.num_requests:,} requests on {shape.num_blocks:,} blocks of "
        f"{shape.block_size} tokens (seed {shape.seed}), {shape.max_running} running at most, "
        f"prefill chunks of {shape.chunk_tokens}: {counts['admit']:,} admissions, "
        f"{counts['run']:,} chunk or decode steps, {counts['free']:,} frees; "
        f"{trace.hit_tokens:,} of {prompt_tokens:,} tokens hit the prefix cache"
    )
