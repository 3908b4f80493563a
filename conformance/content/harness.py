"""The content level's harness: a scheduler over a pool target and a block store.

It admits prompts (with prefix hits), decodes, forks requests for parallel sampling,
frees them, readmits them after a preemption, and resets the prefix cache when idle. Every
action goes through :class:`~kvspec.conformance.content.driver.ContentDriver`, which
compares the pool with the spec after every pool call and reads the K/V back after every
action (see that module for what is checked). This level is a superset of the pool checks.

Why the arguments look the way they do:

* tiny pools (3-8 blocks) of block size 2: hits, eviction of cached blocks, reuse of a
  freed block by another request and refusals for want of blocks all happen often;
* a two-token alphabet: prompts share prefixes, so hits are common, and a fork's two
  branches often write *different* tokens at the same position (which a copy that was
  skipped or went the wrong way then shows);
* one or two layers and KV heads, head size 4, float32 by default: the smallest shapes that
  still have more than one of each axis a copy can forget;
* moves pick requests newest first by ``index % len(...)`` and are listed simplest first,
  so that shrinking deletes actions and lowers values into a short, readable story.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from typing import Any

from kvspec.conformance.content.driver import ContentConfig, ContentDriver, start_driver
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

TOKENS = (0, 1)
MAX_PROMPT = 6
MAX_REQUESTS = 5
"""Live requests at most: more only stalls everyone on a full pool."""

INDEX = Domain(integers(0, 7))
TOKEN = Domain(one_of(TOKENS))


class ContentHarness(Harness):
    """Live requests over a :class:`ContentDriver`; see the module docstring."""

    driver: ContentDriver

    def __init__(self, driver: ContentDriver, recorder: Recorder) -> None:
        super().__init__(driver, recorder)
        self.live: list[int] = []  # request ids, in the order they appeared

    def key(self) -> Hashable:
        return tuple(self.live)

    def copy_bookkeeping(self) -> ContentHarness:
        twin = self.shallow_copy()
        twin.live = list(self.live)
        return twin

    def pick(self, index: int) -> int:
        """Newest first: index 0 is the latest request, so deleting an earlier action
        while shrinking leaves later actions aimed at the same requests."""
        return self.live[-1 - index % len(self.live)]

    def has_requests(self) -> bool:
        return bool(self.live)

    def room(self) -> bool:
        return len(self.live) < MAX_REQUESTS

    def idle_with_cache(self) -> bool:
        """Nothing runs and something is cached: a reset has work to do."""
        return not self.live and any(h is not None for h in self.driver.spec.block_hash)

    def act(self, op: str, **args: Any) -> int | None:
        return self.do(op, **args).result

    @move(prompt=Domain(sequences(TOKENS, 1, MAX_PROMPT)), weight=3, enabled=room)
    def admit(self, prompt: tuple[int, ...]) -> None:
        """A new request: prefix hits, fresh blocks for the rest, its K/V written."""
        rid = self.act("admit", prompt=list(prompt))
        if rid is not None:
            self.live.append(rid)

    @move(index=INDEX, token=TOKEN, weight=3, enabled=has_requests)
    def decode(self, index: int, token: int) -> None:
        """A request appends one token (copy-on-write first if its last block is shared)."""
        self.act("decode", request=self.pick(index), token=token)

    @move(index=INDEX, weight=2, enabled=lambda h: h.has_requests() and h.room())
    def fork(self, index: int) -> None:
        """Parallel sampling: a child shares its parent's blocks."""
        rid = self.act("fork", request=self.pick(index))
        if rid is not None:
            self.live.append(rid)

    @move(index=INDEX, tokens=Domain(lambda rng: tuple(rng.sample(TOKENS, 2))), weight=2,
          enabled=lambda h: h.has_requests() and h.room())
    def sample_two(self, index: int, tokens: tuple[int, ...]) -> None:
        """Fork, then parent and child each decode a different token: the write that makes
        copy-on-write necessary, at once."""
        parent = self.pick(index)
        child = self.act("fork", request=parent)
        if child is None:
            return
        self.live.append(child)
        self.act("decode", request=child, token=tokens[0])
        self.act("decode", request=parent, token=tokens[1])

    @move(index=INDEX, weight=2, enabled=has_requests)
    def free(self, index: int) -> None:
        """A request finishes: its table is freed tail first."""
        rid = self.pick(index)
        self.live.remove(rid)
        self.act("free", request=rid)

    @move(index=INDEX, enabled=has_requests)
    def readmit(self, index: int) -> None:
        """Preempted and readmitted: freed, then admitted again with all its tokens, so it
        hits the blocks it cached itself (if nobody evicted them)."""
        rid = self.pick(index)
        self.live.remove(rid)
        new = self.act("readmit", request=rid)
        if new is not None:
            self.live.append(new)

    @move(enabled=idle_with_cache)
    def reset(self) -> None:
        """Reset the prefix cache while no request runs (the only time it may)."""
        self.act("reset")


    def check_bookkeeping(self) -> None:
        self.driver.check_bookkeeping()


def start(factory: Any, config: ContentConfig, options: RunOptions, recorder: Recorder
          ) -> ContentHarness:
    """A content harness over a fresh pool target and store, the fresh state judged."""
    driver = start_driver(factory, config, on_check=recorder.count_check,
                          judge_bad_input=options.checks_bad_input)
    return ContentHarness(driver, recorder)


def simplify(step: Step) -> Iterator[Step]:
    """Simpler versions of a content action (a shorter prompt, token 0)."""
    a = step.args
    if step.op == "admit":
        prompt = list(a.get("prompt", []))
        for i in range(len(prompt) - 1, -1, -1):
            if len(prompt) > 1:
                yield Step(step.op, {**a, "prompt": prompt[:i] + prompt[i + 1:]})
        for i, tok in enumerate(prompt):
            if tok:
                yield Step(step.op, {**a, "prompt": [*prompt[:i], 0, *prompt[i + 1:]]})
    if step.op == "decode" and a.get("token"):
        yield Step(step.op, {**a, "token": 0})
