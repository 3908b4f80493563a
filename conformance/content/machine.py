"""The content-level Hypothesis state machine, and the runner entry points for it.

The machine plays a scheduler over a pool target and a block store: it admits prompts
(with prefix hits), decodes, forks requests for parallel sampling, frees them, readmits
them after a preemption, and resets the prefix cache when idle. Every action goes through
:class:`~kvspec.conformance.content.driver.ContentDriver`, which compares the pool with the spec
after every pool call and reads the K/V back after every action (see that module for what
is checked). This level is a superset of the pool checks.

Why the arguments look the way they do:

* tiny pools (3-8 blocks) of block size 2: hits, eviction of cached blocks, reuse of a
  freed block by another request and refusals for want of blocks all happen often;
* a two-token alphabet: prompts share prefixes, so hits are common, and a fork's two
  branches often write *different* tokens at the same position (which a copy that was
  skipped or went the wrong way then shows);
* one or two layers and KV heads, head size 4, float32 by default: the smallest shapes
  that still have more than one of each axis a copy can forget;
* rules pick requests newest first by ``index % len(...)`` and are listed simplest first,
  so that shrinking deletes actions and lowers values into a short, readable story.

``run_content_check`` is to this machine what
:func:`kvspec.conformance.engines.randomized.run_check` is to the
pool machine, built from the same runner helpers; ``run_content_mutant`` runs one store
mutant of the zoo and returns its kill-matrix row.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from hypothesis import strategies as st
from hypothesis import target as hypothesis_target
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from kvspec.conformance.commands.mutants import KillRow
from kvspec.conformance.content.driver import (
    ContentConfig,
    ContentDivergence,
    ContentDriver,
    store_cls_for,
)
from kvspec.conformance.content.values import dtype_name
from kvspec.conformance.engines.randomized import (
    DEFAULT_DB,
    CheckResult,
    MachineClass,
    OnFailure,
    OnStep,
    drive,
)
from kvspec.conformance.pool.driver import Divergence
from kvspec.conformance.pool.machine import RunStats
from kvspec.conformance.pool.protocol import PoolTarget
from kvspec.conformance.pool.targets import impl_pool_factory, unsupported_operations
from kvspec.conformance.trace import Step
from kvspec.impl.block_store import BlockStore

TOKENS = (0, 1)
MAX_PROMPT = 6
MAX_REQUESTS = 5
"""Live requests at most: more only stalls everyone on a full pool."""


def make_content_machine(
    factory: Callable[..., PoolTarget],
    *,
    store_cls: type[BlockStore] | None = None,
    profile: str = "current",
    mode: str = "strict",
    device: str = "cpu",
    dtype: torch.dtype | str = torch.float32,
    block_size: int = 2,
    head_size: int = 4,
    min_blocks: int = 3,
    max_blocks: int = 8,
    stats: RunStats | None = None,
    on_failure: Callable[[Divergence], None] | None = None,
    on_step: Callable[[], None] | None = None,
    on_example: Callable[[ContentDriver], None] | None = None,
) -> type[RuleBasedStateMachine]:
    """A machine class that drives ``factory``'s pools and ``store_cls`` stores (default:
    the factory's own, see :func:`store_cls_for`). ``on_example`` sees each example's driver
    when it ends, e.g. to keep its actions for a replay."""
    stats = stats if stats is not None else RunStats()
    store_cls = store_cls or store_cls_for(factory)
    unsupported = unsupported_operations(factory)
    dtype = dtype_name(dtype)

    class ContentMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.driver: ContentDriver | None = None
            self.live: list[int] = []  # request ids, in the order they appeared
            self.peak_pressure = 0.0
            stats.examples += 1

        # -------------------------------------------------------------- plumbing

        def act(self, rule_name: str, op: str, **args: Any) -> int | None:
            driver = self.driver
            assert driver is not None
            return stats.step(rule_name, lambda: driver.run(Step(op, dict(args))),
                              on_step=on_step, on_failure=on_failure)

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
            if self.driver is None or self.live:
                return False
            return any(h is not None for h in self.driver.spec.block_hash)

        # -------------------------------------------------------------- setup

        @initialize(
            num_blocks=st.integers(min_blocks, max_blocks),
            enable_caching=st.sampled_from([True, True, True, False]),
            num_layers=st.integers(1, 2),
            num_kv_heads=st.integers(1, 2),
        )
        def make_pool(
            self, num_blocks: int, enable_caching: bool, num_layers: int, num_kv_heads: int
        ) -> None:
            config = ContentConfig(
                num_blocks,
                enable_caching,
                profile,
                mode,
                block_size=block_size,
                num_layers=num_layers,
                num_kv_heads=num_kv_heads,
                head_size=head_size,
                dtype=dtype,
                device=device,
            )

            def count(name: str) -> None:
                stats.invariant_checks[name] += 1

            self.driver = ContentDriver(
                factory, config, store_cls=store_cls, unsupported=unsupported, on_check=count
            )
            try:
                self.driver.start()
            except ContentDivergence as failure:
                if on_failure:
                    on_failure(failure)
                raise

        # -------------------------------------------------------------- actions

        @precondition(room)
        @rule(prompt=st.lists(st.sampled_from(TOKENS), min_size=1, max_size=MAX_PROMPT))
        def admit(self, prompt: list[int]) -> None:
            """A new request: prefix hits, fresh blocks for the rest, its K/V written."""
            rid = self.act("admit", "admit", prompt=prompt)
            if rid is not None:
                self.live.append(rid)

        @precondition(has_requests)
        @rule(index=st.integers(0, 7), token=st.sampled_from(TOKENS))
        def decode(self, index: int, token: int) -> None:
            """A request appends one token (copy-on-write first if its last block is shared)."""
            self.act("decode", "decode", request=self.pick(index), token=token)

        @precondition(lambda self: self.has_requests() and self.room())
        @rule(index=st.integers(0, 7))
        def fork(self, index: int) -> None:
            """Parallel sampling: a child shares its parent's blocks."""
            rid = self.act("fork", "fork", request=self.pick(index))
            if rid is not None:
                self.live.append(rid)

        @precondition(lambda self: self.has_requests() and self.room())
        @rule(index=st.integers(0, 7), tokens=st.lists(st.sampled_from(TOKENS), min_size=2,
                                                        max_size=2, unique=True))
        def sample_two(self, index: int, tokens: list[int]) -> None:
            """Fork, then parent and child each decode a different token: the write that makes
            copy-on-write necessary, at once."""
            parent = self.pick(index)
            child = self.act("sample_two", "fork", request=parent)
            if child is None:
                return
            self.live.append(child)
            self.act("sample_two", "decode", request=child, token=tokens[0])
            self.act("sample_two", "decode", request=parent, token=tokens[1])

        @precondition(has_requests)
        @rule(index=st.integers(0, 7))
        def free(self, index: int) -> None:
            """A request finishes: its table is freed tail first."""
            rid = self.pick(index)
            self.live.remove(rid)
            self.act("free", "free", request=rid)

        @precondition(has_requests)
        @rule(index=st.integers(0, 7))
        def readmit(self, index: int) -> None:
            """Preempted and readmitted: freed, then admitted again with all its tokens, so it
            hits the blocks it cached itself (if nobody evicted them)."""
            rid = self.pick(index)
            self.live.remove(rid)
            new = self.act("readmit", "readmit", request=rid)
            if new is not None:
                self.live.append(new)

        @precondition(idle_with_cache)
        @rule()
        def reset(self) -> None:
            """Reset the prefix cache while no request runs (the only time it may)."""
            self.act("reset", "reset")

        # -------------------------------------------------------------- checks

        @invariant()
        def track_pressure(self) -> None:
            """Remember the fullest the pool got; ``teardown`` reports it to Hypothesis."""
            if self.driver is not None:
                spec = self.driver.spec
                used = 1.0 - len(spec.free_queue) / max(1, spec.num_blocks - 1)
                self.peak_pressure = max(self.peak_pressure, used)

        def teardown(self) -> None:
            # Steer generation toward full pools, where reuse and eviction bugs live.
            hypothesis_target(self.peak_pressure, label="peak pool usage")
            if on_example and self.driver is not None:
                on_example(self.driver)

    ContentMachine.__name__ = "ContentMachine"
    ContentMachine.__qualname__ = "ContentMachine"
    return ContentMachine


def run_content_check(
    factory: Callable[..., PoolTarget] = impl_pool_factory,
    *,
    target_name: str = "impl",
    store_cls: type[BlockStore] | None = None,
    profile: str = "current",
    mode: str = "strict",
    settings_name: str | None = None,
    max_examples: int | None = None,
    steps: int | None = None,
    seed: int | None = None,
    database: Path | None = DEFAULT_DB,
    progress: bool = True,
    device: str = "cpu",
    dtype: torch.dtype | str = torch.float32,
    on_example: Callable[[ContentDriver], None] | None = None,
) -> CheckResult:
    """Drive ``factory``'s pools and their stores through the content machine.

    Same settings profiles, seeding, example database and shrunk-failure capture as the pool
    level's ``run_check``; the database key also names the device and dtype. On a failure
    the result holds the shrunk :class:`ContentDivergence` (whose ``trace()`` is a
    ``content`` trace of scheduler actions).
    """
    dtype = dtype_name(dtype)
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as exc:  # torch's "not compiled with CUDA" asserts
        raise ValueError(f"run_content_check: device {device!r} is not available: {exc}") from None
    unsupported = unsupported_operations(factory)

    def build(stats: RunStats, on_failure: OnFailure, on_step: OnStep) -> MachineClass:
        return make_content_machine(
            factory,
            store_cls=store_cls,
            profile=profile,
            mode=mode,
            device=device,
            dtype=dtype,
            stats=stats,
            on_failure=on_failure,
            on_step=on_step,
            on_example=on_example,
        )

    return drive(
        build,
        target_name=target_name,
        level="content",
        profile=profile,
        mode=mode,
        settings_name=settings_name,
        max_examples=max_examples,
        steps=steps,
        seed=seed,
        database=database,
        database_key=f"kvspec:content:{target_name}:{profile}:{mode}:{device}:{dtype}",
        progress=progress,
        unsupported=unsupported,
    )


def run_content_mutant(
    name: str, settings_name: str = "ci", seed: int | None = 0, *, device: str = "cpu"
) -> KillRow:
    """Run the content machine against one content-level mutant of the zoo; no example
    database, so each run is fresh."""
    from kvspec.conformance.mutants.store_zoo import ensure_registered

    mutant = ensure_registered().get(name)
    if mutant is None:
        raise KeyError(f"run_content_mutant: {name!r} is not a content-level mutant")
    result = run_content_check(
        mutant.factory,
        target_name=f"mutant:{name}",
        profile=mutant.profile,
        settings_name=settings_name,
        seed=seed,
        database=None,
        progress=False,
        device=device,
    )
    return KillRow.from_result(name, mutant.level, result)
