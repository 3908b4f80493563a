"""Content conformance: a scheduler's view of requests, played over a pool and a block store.

The pool level checks ids; this level checks the *bytes* behind them. A
:class:`ContentDriver` plays requests (admit a prompt with prefix hits, decode, fork for
parallel sampling, free, readmit after preemption, reset the prefix cache when idle) over a
pool target and an :class:`kvspec.impl.block_store.BlockStore` whose write guard is that target.
Every pool operation goes through a :class:`~kvspec.conformance.pool.driver.PoolDriver`, so the
pool is
still compared with the spec at every step: this level is a superset of the pool checks.

Expected values come from :mod:`kvspec.conformance.content.values`: the K/V of token ``i`` is a
function of ``tokens[: i + 1]`` and a block's hash is its token prefix, so the content of
every live request and of every cached block can be recomputed from tokens alone, bit for
bit, in any dtype and on any device.

What is checked after every action (the names a failure is reported under)
    ``gather-matches-tokens``: gathering a live request's block table yields exactly the K/V
    its own tokens determine. ``fork-isolation``: the same failure, when the wrong value is a
    fork relative's token (a parent and its child each see their own tokens only).
    ``cached-block-content``: every cached block holds the K/V its hash names, held or not,
    so an overwritten cache entry is seen before anyone hits it.
    ``writes-stay-in-their-slots``: a write changes only the slots it names, a copy only its
    destinations; nothing lands in a shared or cached block.
    ``legal-write-refused``: the store refused a write or copy that the spec says is legal.
    ``device-bit-identical``: with the store on an accelerator, a CPU shadow store fed the
    same calls holds the same bits. The pool's own invariants and observations keep their
    pool-level names.

Actions are the trace
    A content trace records scheduler actions (``admit``, ``decode``, ``fork``, ``free``,
    ``readmit``, ``reset``), not the pool and store calls they make: replaying the actions
    repeats those calls exactly, and a short list of actions reads as a story. The calls
    themselves are kept in :attr:`ContentDriver.ops` for display.
"""

from __future__ import annotations

import importlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from kvspec.conformance.content.values import (
    DTYPES,
    ExpectedKV,
    bits,
    chain_hash,
    dtype_name,
    tokens_of_hash,
)
from kvspec.conformance.outcome import Divergence, Outcome, OutsideScope
from kvspec.conformance.pool.driver import PoolConfig, PoolDriver
from kvspec.conformance.pool.protocol import PoolTarget
from kvspec.conformance.pool.targets import TargetSpecError, load_factory, unsupported_operations
from kvspec.conformance.trace import LEVEL_OPS, Step, Trace
from kvspec.impl.block_store import BlockStore

#: Scheduler actions and their arguments: the operations of a ``content`` trace. The trace
#: module's table of levels is where ``Trace.load`` looks; this fills it in if it lacks them.
CONTENT_OPS: dict[str, tuple[str, ...]] = LEVEL_OPS.setdefault(
    "content",
    {
        "admit": ("prompt",),
        "decode": ("request", "token"),
        "fork": ("request",),
        "free": ("request",),
        "readmit": ("request",),
        "reset": (),
    },
)

#: The names content failures are reported under (pool failures keep the pool's names).
CONTENT_CHECKS = (
    "gather-matches-tokens",
    "fork-isolation",
    "cached-block-content",
    "writes-stay-in-their-slots",
    "legal-write-refused",
    "device-bit-identical",
)


@dataclass(frozen=True)
class ContentConfig(PoolConfig):
    """A pool config plus the store's shape, dtype and device.

    A :class:`PoolConfig` subclass, so the :class:`PoolDriver` takes it as it is and every
    failure, pool-level ones included, records the whole configuration.
    """

    block_size: int = 2
    num_layers: int = 1
    num_kv_heads: int = 1
    head_size: int = 4
    dtype: str = "float32"
    device: str = "cpu"

    def to_json(self) -> dict[str, Any]:
        return {
            **super().to_json(),
            "store": {
                "block_size": self.block_size,
                "num_layers": self.num_layers,
                "num_kv_heads": self.num_kv_heads,
                "head_size": self.head_size,
                "dtype": self.dtype,
                "device": self.device,
            },
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ContentConfig:
        pool = PoolConfig.from_json(data)
        store = dict(data.get("store", {}))
        return cls(
            num_blocks=pool.num_blocks,
            enable_caching=pool.enable_caching,
            profile=pool.profile,
            mode=pool.mode,
            block_size=int(store.get("block_size", 2)),
            num_layers=int(store.get("num_layers", 1)),
            num_kv_heads=int(store.get("num_kv_heads", 1)),
            head_size=int(store.get("head_size", 4)),
            dtype=dtype_name(store.get("dtype", "float32")),
            device=str(store.get("device", "cpu")),
        )

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]


def store_cls_for(factory: Callable[..., PoolTarget]) -> type[BlockStore]:
    """The store a target pairs with its pool: ``factory.store`` (``"module.path:Class"``,
    a ``BlockStore`` subclass) when the factory names one, else ``BlockStore``."""
    path = getattr(factory, "store", None)
    if path is None:
        return BlockStore
    module_name, sep, attr = str(path).partition(":")
    if not sep or not module_name or not attr:
        raise TargetSpecError(
            f"{factory!r}: store {path!r}; expected 'module.path:Class' naming a BlockStore"
        )
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not (isinstance(obj, type) and issubclass(obj, BlockStore)):
        raise TargetSpecError(f"{factory!r}: store {path!r} is not a BlockStore subclass")
    return obj


# ------------------------------------------------------------------------------ requests


@dataclass
class Request:
    """What a scheduler keeps per request: its tokens and block table.

    ``family`` is the id of the request its forks started from, so a wrong value can be
    recognised as a fork relative's token.
    """

    rid: int
    tokens: list[int]
    table: list[int]
    family: int


@dataclass
class ContentDriver:
    """Plays scheduler actions over a pool target and a block store, and judges each one.

    Raises :class:`Divergence` at the first disagreement, with the actions so far.
    ``store_cls`` builds the store (a :class:`BlockStore` or a subclass, such as a mutant);
    its guard is the pool target. ``unsupported`` names protocol operations the target
    lacks: without ``fork_block``, copy-on-write takes a fresh block and drops one reference
    from the shared one, which leaves the pool exactly as a fork would. ``skip`` switches
    named content checks off, to show what the others catch on their own. ``shadow``: keep
    a CPU store fed the same calls and compare bits after every action (default: when the
    store is not on the CPU).
    """

    def __init__(
        self,
        factory: Callable[..., PoolTarget],
        config: ContentConfig,
        *,
        store_cls: type[BlockStore] = BlockStore,
        unsupported: frozenset[str] = frozenset(),
        on_check: Callable[[str], None] | None = None,
        skip: frozenset[str] = frozenset(),
        shadow: bool | None = None,
    ) -> None:
        unknown = set(skip) - set(CONTENT_CHECKS)
        if unknown:
            raise ValueError(f"ContentDriver: unknown checks {sorted(unknown)} in skip; "
                             f"expected names from {CONTENT_CHECKS}")
        self.skip = frozenset(skip)
        self.config = config
        self.on_check = on_check
        self.steps: list[Step] = []
        self.ops: list[Step] = []
        self.requests: dict[int, Request] = {}
        self.next_rid = 0
        self.can_fork = "fork_block" not in unsupported
        self.expected = ExpectedKV(
            config.num_layers, config.num_kv_heads, config.head_size, config.torch_dtype
        )
        self.pool = PoolDriver(factory, config, on_check=on_check)
        shape = (
            config.num_blocks,
            config.block_size,
            config.num_layers,
            config.num_kv_heads,
            config.head_size,
        )
        self.store = store_cls(
            *shape, dtype=config.torch_dtype, device=config.device, guard=self.pool.target
        )
        # On an accelerator, a CPU store fed the same calls: the bits must agree.
        self.shadow: BlockStore | None = None
        if shadow or (shadow is None and self.store.device.type != "cpu"):
            self.shadow = store_cls(*shape, dtype=config.torch_dtype, device="cpu")

    # ------------------------------------------------------------------ plumbing

    @property
    def spec(self):
        return self.pool.spec

    @property
    def block_size(self) -> int:
        return self.config.block_size

    def fail(self, caught_by: str, message: str, *, spec_error: bool = False,
             **views: Any) -> Divergence:
        """A content-level failure: ``steps`` are scheduler actions, ``detail`` the pool and
        store calls they made (the last one is where it failed)."""
        return Divergence(
            caught_by=caught_by,
            message=message,
            level="content",
            config=self.config,
            steps=list(self.steps),
            spec_view=views.get("spec_view", {}),
            target_view=views.get("target_view", {}),
            spec_error=spec_error,
            detail=list(self.ops),
        )

    def _count(self, name: str) -> None:
        if self.on_check:
            self.on_check(name)

    def _pool(self, op: str, **args: Any) -> Outcome:
        """One pool operation, judged by the PoolDriver against the spec."""
        step = Step(op, dict(args))
        self.ops.append(step)
        try:
            return self.pool.apply(step)
        except Divergence as failure:
            raise self.fail(
                failure.caught_by,
                f"{failure.message} (pool call {step.describe()})",
                spec_error=failure.spec_error,
                spec_view=failure.spec_view,
                target_view=failure.target_view,
            ) from None
        except OutsideScope as outside:
            raise OutsideScope(len(self.steps), f"pool call {step.describe()}: "
                               f"{outside.reason}") from None

    def start(self) -> None:
        """Check the fresh pool and store."""
        try:
            self.pool.check()
        except Divergence as failure:
            raise self.fail(failure.caught_by, failure.message) from None
        self.check()

    # ------------------------------------------------------------------ store calls

    def _require_writable(self, op: str, block_ids: set[int]) -> None:
        """The harness only issues legal writes; a violation is a harness bug, not a finding."""
        for b in sorted(block_ids):
            if self.spec.ref_cnt[b] != 1 or self.spec.block_hash[b] is not None:
                raise AssertionError(
                    f"harness bookkeeping: {op} into block {b} with ref_cnt "
                    f"{self.spec.ref_cnt[b]} and hash {self.spec.block_hash[b]!r}"
                )

    def _changed_slots(self, before: torch.Tensor) -> set[int]:
        """Slots whose bits differ between ``before`` and the store now."""
        c = self.config
        shape = (c.num_layers * 2, c.num_blocks * c.block_size, -1)
        now = bits(self.store.kv).reshape(shape)
        was = bits(before).reshape(shape)
        changed = (now != was).any(dim=2).any(dim=0)
        return set(torch.nonzero(changed).flatten().tolist())

    def _store_call(self, op: str, allowed_slots: set[int], call: Callable[[BlockStore], None],
                    **args: Any) -> None:
        """Run a store call on the store (and the shadow); refusals and stray writes fail."""
        step = Step(op, dict(args))
        self.ops.append(step)
        before = self.store.kv.clone()
        try:
            call(self.store)
        except Exception as exc:  # noqa: BLE001 - any exception refuses a legal call
            raise self.fail(
                "legal-write-refused",
                f"{step.describe()} is legal (every destination block has ref_cnt 1 and no "
                f"hash), but the store raised {type(exc).__name__}: {exc}",
            ) from None
        if self.shadow is not None:
            call(self.shadow)
        if "writes-stay-in-their-slots" in self.skip:
            return
        self._count("writes-stay-in-their-slots")
        stray = sorted(self._changed_slots(before) - allowed_slots)
        if stray:
            bs = self.block_size
            where = ", ".join(f"block {s // bs} offset {s % bs}" for s in stray)
            held = [
                f"block {b} (ref_cnt {self.spec.ref_cnt[b]}, hash {self.spec.block_hash[b]!r})"
                for b in sorted({s // bs for s in stray})
            ]
            block, offset = divmod(stray[0], bs)
            label = f"block {block} offset {offset}"
            raise self.fail(
                "writes-stay-in-their-slots",
                f"{step.describe()} changed {where}, outside what it names; "
                f"now: {'; '.join(held)}",
                spec_view=_kv_view(label, *_slot(before, block, offset)),
                target_view=_kv_view(label, *_slot(self.store.kv, block, offset)),
            )

    def write_tokens(self, request: Request, start: int) -> None:
        """Write K/V for ``request.tokens[start:]`` through the slot mapping of its table."""
        bs = self.block_size
        stop = len(request.tokens)
        slots = [request.table[i // bs] * bs + i % bs for i in range(start, stop)]
        self._require_writable("write", {s // bs for s in slots})
        key, value = self.expected.span(request.tokens, start, stop)
        self._store_call(
            "write",
            set(slots),
            lambda store: store.write(slots, key, value),
            slots=slots,
            request=request.rid,
            positions=[start, stop],
        )

    def copy_blocks(self, src: list[int], dst: list[int]) -> None:
        bs = self.block_size
        self._require_writable("copy_blocks", set(dst))
        allowed = {b * bs + o for b in dst for o in range(bs)}
        self._store_call(
            "copy_blocks",
            allowed,
            lambda store: store.copy_blocks(src, dst),
            src_ids=list(src),
            dst_ids=list(dst),
        )

    # ------------------------------------------------------------------ pool helpers

    def cache_full_blocks(self, request: Request, first: int) -> None:
        """Cache blocks ``first..`` of ``request`` that are full, chained to their parents."""
        if not self.config.enable_caching:
            return
        bs = self.block_size
        for j in range(first, len(request.tokens) // bs):
            parent = chain_hash(request.tokens, j - 1, bs) if j > 0 else None
            self._pool(
                "cache_block",
                block_id=request.table[j],
                block_hash=chain_hash(request.tokens, j, bs),
                parent=parent,
            )

    def copy_on_write(self, request: Request, index: int) -> bool:
        """Give ``request`` its own copy of shared block ``table[index]`` before it writes
        there: ``fork_block``, then ``copy_blocks``. False when no block is free."""
        old = request.table[index]
        if self.can_fork:
            out = self._pool("fork_block", block_id=old)
            if out.refused is not None:
                return False
            new = out.result
        else:
            out = self._pool("get_new_blocks", num_blocks=1)
            if out.refused is not None:
                return False
            new = out.result[0]
            self._pool("free_blocks", block_ids=[old])
        if new != old:
            self.copy_blocks([old], [new])
            request.table[index] = new
        return True

    # ------------------------------------------------------------------ actions

    def apply(self, step: Step) -> Outcome:
        """Take one scheduler action, then check everything (see :meth:`run`)."""
        return Outcome(result=self.run(step))

    def run(self, step: Step) -> int | None:
        """Take one scheduler action, then check everything. Returns the request id an
        ``admit``, ``fork`` or ``readmit`` created (None when it could not). An action on a
        request that does not exist (or a reset while requests run) is out of scope: the
        machine never takes one, a hand-edited trace or a minimizer candidate can."""
        if step.op not in CONTENT_OPS:
            raise ValueError(f"unknown content action {step.op!r}; expected {sorted(CONTENT_OPS)}")
        rid = step.args.get("request")
        if step.op in ("decode", "fork", "free", "readmit") and rid not in self.requests:
            raise OutsideScope(len(self.steps) + 1,
                               f"{step.describe()}: no live request {rid!r}")
        if step.op == "reset" and self.requests:
            raise OutsideScope(len(self.steps) + 1, "reset: the prefix cache is reset only "
                               "when no request runs")
        self.steps.append(step)
        a = step.args
        result: int | None = None
        if step.op == "admit":
            result = self._admit(list(a["prompt"]))
        elif step.op == "decode":
            self._decode(self.requests[a["request"]], int(a["token"]))
        elif step.op == "fork":
            result = self._fork(self.requests[a["request"]])
        elif step.op == "free":
            self._free(self.requests.pop(a["request"]))
        elif step.op == "readmit":
            request = self.requests.pop(a["request"])
            self._free(request)
            result = self._admit(list(request.tokens))
        else:
            self._pool("reset_prefix_cache")
        self.check()
        return result

    def _admit(self, prompt: list[int]) -> int | None:
        """Prefix hits block by block (stop at the first miss; the last token is always
        computed, so at most ``(n - 1) // block_size`` blocks), touch the hits, allocate
        the rest, write the K/V of the computed tokens, cache the newly full blocks."""
        if not prompt:
            raise ValueError("admit: a prompt has at least one token")
        bs = self.block_size
        hits: list[int] = []
        if self.config.enable_caching:
            for j in range((len(prompt) - 1) // bs):
                out = self._pool("get_cached_block", block_hash=chain_hash(prompt, j, bs))
                if out.result is None:
                    break
                hits.append(out.result)
        if hits:
            self._pool("touch", block_ids=list(hits))
        need = -(-len(prompt) // bs) - len(hits)
        out = self._pool("get_new_blocks", num_blocks=need)
        if out.refused is not None:
            if hits:  # not admitted: give the hits back, tail first
                self._pool("free_blocks", block_ids=list(reversed(hits)))
            return None
        request = Request(self.next_rid, list(prompt), hits + list(out.result), self.next_rid)
        self.next_rid += 1
        self.requests[request.rid] = request
        self.write_tokens(request, len(hits) * bs)
        self.cache_full_blocks(request, len(hits))
        return request.rid

    def _decode(self, request: Request, token: int) -> None:
        """Append one token: a new block at a block boundary, else copy-on-write if the last
        block is shared (a fork's), then write; cache the block when it fills. A request that
        finds no free block waits (its token is not appended)."""
        bs = self.block_size
        position = len(request.tokens)
        if position % bs == 0:
            out = self._pool("get_new_blocks", num_blocks=1)
            if out.refused is not None:
                return
            request.table.append(out.result[0])
        elif self.spec.ref_cnt[request.table[-1]] > 1 and not self.copy_on_write(
            request, len(request.table) - 1
        ):
            return
        request.tokens.append(token)
        self.write_tokens(request, position)
        if (position + 1) % bs == 0:
            self.cache_full_blocks(request, position // bs)

    def _fork(self, parent: Request) -> int:
        """Parallel sampling: a child shares every block of its parent (one more reference
        each) and continues from the same tokens."""
        if parent.table:
            self._pool("touch", block_ids=list(parent.table))
        child = Request(self.next_rid, list(parent.tokens), list(parent.table), parent.family)
        self.next_rid += 1
        self.requests[child.rid] = child
        return child.rid

    def _free(self, request: Request) -> None:
        """A request finishes or is preempted: its table is freed tail first."""
        self._pool("free_blocks", block_ids=list(reversed(request.table)))

    # ------------------------------------------------------------------ checks

    def check(self) -> None:
        """Every content invariant (the pool's were checked by each pool call)."""
        self.check_bookkeeping()
        if "gather-matches-tokens" not in self.skip:
            self.check_requests()
        if "cached-block-content" not in self.skip:
            self.check_cached_blocks()
        if "device-bit-identical" not in self.skip:
            self.check_shadow()

    def check_bookkeeping(self) -> None:
        """The harness's tables account for every reference the spec counts."""
        self._count("harness-bookkeeping")
        held = Counter(b for r in self.requests.values() for b in r.table)
        for b in range(1, self.config.num_blocks):
            if self.spec.ref_cnt[b] != held[b]:
                raise AssertionError(
                    f"harness bookkeeping: block {b} ref_cnt {self.spec.ref_cnt[b]} "
                    f"but held {held[b]} times"
                )

    def check_requests(self) -> None:
        """Each live request's gather is exactly the K/V its own tokens determine."""
        for request in self.requests.values():
            self._count("gather-matches-tokens")
            n = len(request.tokens)
            k, v = self.store.gather(request.table, n)
            want_k, want_v = self.expected.span(request.tokens, 0, n)
            got = (bits(k.cpu()), bits(v.cpu()))
            want = (bits(want_k), bits(want_v))
            if torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]):
                continue
            raise self._gather_failure(request, got, want)

    def _gather_failure(
        self,
        request: Request,
        got: tuple[torch.Tensor, torch.Tensor],
        want: tuple[torch.Tensor, torch.Tensor],
    ) -> Divergence:
        bs = self.block_size
        # [layers, tokens, heads, size] -> per token: does K / V differ anywhere?
        bad_k = (got[0] != want[0]).flatten(2).any(dim=2).any(dim=0)
        bad_v = (got[1] != want[1]).flatten(2).any(dim=2).any(dim=0)
        position = int(torch.nonzero(bad_k | bad_v)[0, 0])
        planes = "K and V" if bad_k[position] and bad_v[position] else (
            "K" if bad_k[position] else "V"
        )
        block = request.table[position // bs]
        where = (
            f"request {request.rid} (tokens {request.tokens}, table {request.table}): "
            f"{planes} of position {position} (block {block} offset {position % bs}, "
            f"ref_cnt {self.spec.ref_cnt[block]}, hash {self.spec.block_hash[block]!r})"
        )
        k, v = self.store.gather([block], bs)
        stored = (k[:, position % bs].cpu(), v[:, position % bs].cpu())
        at = (bits(stored[0]), bits(stored[1]))
        mine = self.expected.token(request.tokens[: position + 1])
        label = f"request {request.rid} position {position}"
        views = {
            "spec_view": _kv_view(label, mine[:, 0], mine[:, 1]),
            "target_view": _kv_view(label, *stored),
        }
        for other in self.requests.values():
            if other.rid == request.rid or other.family != request.family:
                continue
            if len(other.tokens) <= position or other.tokens[: position + 1] == request.tokens[
                : position + 1
            ]:
                continue
            theirs = self.expected.token(other.tokens[: position + 1])
            if torch.equal(at[0], bits(theirs[:, 0])) and torch.equal(at[1], bits(theirs[:, 1])):
                return self.fail(
                    "fork-isolation",
                    f"{where} holds the K/V of fork relative request {other.rid} "
                    f"(tokens {other.tokens}) instead of its own",
                    **views,
                )
        return self.fail(
            "gather-matches-tokens",
            f"{where} is not the K/V its tokens {request.tokens[: position + 1]} determine",
            **views,
        )

    def check_cached_blocks(self) -> None:
        """Every cached block, held or free, holds the K/V its hash names: a prefix hit on
        it would serve exactly that."""
        bs = self.block_size
        for b, h in enumerate(self.spec.block_hash):
            if h is None:
                continue
            self._count("cached-block-content")
            tokens = tokens_of_hash(h)
            first = len(tokens) - bs
            want_k, want_v = self.expected.span(tokens, first, len(tokens))
            k, v = self.store.gather([b], bs)
            if torch.equal(bits(k.cpu()), bits(want_k)) and torch.equal(
                bits(v.cpu()), bits(want_v)
            ):
                continue
            label = f"block {b}"
            raise self.fail(
                "cached-block-content",
                f"block {b} is cached under {h!r} (ref_cnt {self.spec.ref_cnt[b]}) but does not "
                f"hold the K/V of tokens {tokens[first:]} at positions {first}..{len(tokens) - 1}: "
                "a prefix hit on it would serve overwritten content",
                spec_view=_kv_view(label, want_k, want_v),
                target_view=_kv_view(label, k.cpu(), v.cpu()),
            )

    def check_shadow(self) -> None:
        """With the store on an accelerator: the CPU shadow holds the same bits."""
        if self.shadow is None:
            return
        self._count("device-bit-identical")
        if not torch.equal(bits(self.store.kv.cpu()), bits(self.shadow.kv)):
            raise self.fail(
                "device-bit-identical",
                f"the {self.store.device} store and a CPU store fed the same calls differ",
            )

    # ------------------------------------------------------------------ observations

    def gathers(self) -> list[torch.Tensor]:
        """Every live request's K and V (request id order) and the whole cache, on the CPU:
        what two stores that saw the same actions must agree on bit for bit."""
        out: list[torch.Tensor] = []
        for rid in sorted(self.requests):
            request = self.requests[rid]
            k, v = self.store.gather(request.table, len(request.tokens))
            out += [k.cpu(), v.cpu()]
        c = self.config
        k, v = self.store.gather(list(range(c.num_blocks)), c.num_blocks * c.block_size)
        return [*out, k.cpu(), v.cpu()]


def _slot(kv: torch.Tensor, block: int, offset: int) -> tuple[torch.Tensor, torch.Tensor]:
    """K and V of one slot of a store's ``kv`` tensor, every layer, on the CPU."""
    return kv[:, 0, block, offset].cpu(), kv[:, 1, block, offset].cpu()


def _kv_view(label: str, k: torch.Tensor, v: torch.Tensor) -> dict[str, list[float]]:
    """K and V values for a failure report's side-by-side view ("spec" is what the tokens
    determine, "target" what the store holds)."""
    return {
        f"{label} K": [float(x) for x in k.flatten().tolist()],
        f"{label} V": [float(x) for x in v.flatten().tolist()],
    }


# ------------------------------------------------------------------------------ replay


def replay_actions(
    factory: Callable[..., PoolTarget],
    config: ContentConfig,
    steps: Sequence[Step],
    *,
    store_cls: type[BlockStore] = BlockStore,
    unsupported: frozenset[str] = frozenset(),
    skip: frozenset[str] = frozenset(),
    shadow: bool | None = None,
    on_action: Callable[[ContentDriver], None] | None = None,
) -> ContentDriver:
    """Run ``steps`` through a fresh driver; raises Divergence at the first failure.
    ``skip`` and ``shadow`` are :class:`ContentDriver`'s; ``on_action`` sees the driver after
    each action."""
    driver = ContentDriver(
        factory, config, store_cls=store_cls, unsupported=unsupported, skip=skip, shadow=shadow
    )
    driver.start()
    for step in steps:
        driver.run(step)
        if on_action:
            on_action(driver)
    return driver


def assert_same_gathers(
    steps: Sequence[Step],
    config: ContentConfig,
    devices: Sequence[str],
    *,
    factory: Callable[..., PoolTarget] | None = None,
    store_cls: type[BlockStore] = BlockStore,
) -> int:
    """Replay the same actions with the store on each of ``devices`` and assert that after
    every action every gather is bit-identical to the first device's. Returns the number of
    tensors compared. Each replay also runs every content check on its own device."""
    if factory is None:
        from kvspec.conformance.pool.targets import impl_pool_factory

        factory = impl_pool_factory
    if not devices:
        raise ValueError("assert_same_gathers: expected at least one device")
    runs: list[list[list[torch.Tensor]]] = []
    for device in devices:
        seen: list[list[torch.Tensor]] = []
        replay_actions(
            factory,
            _with_device(config, device),
            steps,
            store_cls=store_cls,
            on_action=lambda driver, seen=seen: seen.append(driver.gathers()),
        )
        runs.append(seen)
    compared = 0
    reference = runs[0]
    for device, run in zip(devices[1:], runs[1:], strict=True):
        if len(run) != len(reference):
            raise AssertionError(f"{device}: {len(run)} actions replayed, {devices[0]}: "
                                 f"{len(reference)}")
        for i, (mine, theirs) in enumerate(zip(run, reference, strict=True)):
            if len(mine) != len(theirs):
                raise AssertionError(f"after action {i + 1} ({steps[i].describe()}): {device} "
                                     f"has {len(mine)} gathers, {devices[0]} {len(theirs)}")
            for j, (x, y) in enumerate(zip(mine, theirs, strict=True)):
                if x.shape != y.shape or x.dtype != y.dtype or not torch.equal(bits(x), bits(y)):
                    raise AssertionError(
                        f"after action {i + 1} ({steps[i].describe()}): gather {j} differs "
                        f"between {device} and {devices[0]}"
                    )
                compared += 1
    return compared


def _with_device(config: ContentConfig, device: str) -> ContentConfig:
    data = config.to_json()
    data["store"]["device"] = device
    return ContentConfig.from_json(data)


def start_driver(
    factory: Callable[..., PoolTarget],
    config: ContentConfig,
    *,
    on_check: Callable[[str], None] | None = None,
    judge_bad_input: bool = True,
) -> ContentDriver:
    """A driver over a fresh pool target and its store, the fresh state already judged."""
    driver = ContentDriver(factory, config, store_cls=store_cls_for(factory),
                           unsupported=unsupported_operations(factory), on_check=on_check)
    driver.pool.judge_bad_input = judge_bad_input
    driver.start()
    return driver


def load_content_factory(target: str) -> Callable[..., PoolTarget]:
    """A pool factory by ``--target`` name; store mutants of the zoo included."""
    if target.startswith("mutant:"):
        from kvspec.conformance.mutants.store_zoo import ensure_registered

        ensure_registered()
    return load_factory(target)


def replay_content_trace(
    trace: Trace,
    target: str | Callable[..., PoolTarget] = "impl",
    *,
    mode: str | None = None,
    device: str | None = None,
) -> Any:
    """Replay a ``content`` trace on ``target`` (a ``--target`` string or a factory) and its
    store; ``mode`` and ``device`` override the recorded ones. Returns a
    :class:`kvspec.conformance.engines.replay.ReplayResult`."""
    from kvspec.conformance.engines.replay import replay_trace

    if trace.level != "content":
        raise ValueError(f"replay_content_trace: a {trace.level!r} trace; expected 'content'")
    config = dict(trace.config)
    if device:
        config["store"] = {**config.get("store", {}), "device": device}
    return replay_trace(Trace(trace.level, config, trace.steps, trace.note), target, mode=mode)
