"""Drive the spec and a target in lockstep, one pool operation at a time.

Both the Hypothesis machine and ``kvspec replay`` go through :class:`PoolDriver`: the
machine decides *which* step to take, the driver takes it on both sides and judges the
outcome. So a trace replayed from a file is judged exactly as it was when it was found.

After each step the driver:

1. checks that the target refused exactly when the spec refused, and that a refused
   step changed no observation of the target;
2. compares return values (ids handed out, lookups, reset results);
3. runs every spec invariant on the target's observations (a target bug is reported by
   the rule it breaks) and on the spec's own state (a spec bug, should it happen);
4. compares every observation of the target with the spec's.

In ``strict`` mode the target must make exactly the spec's choices. In ``abstract`` mode
the target may hand out any free block: the spec adopts the choice when it is one the
spec allows, and queue order is not compared.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from kvspec.conformance.pool.protocol import PoolTarget
from kvspec.conformance.trace import Step, Trace
from kvspec.spec import pool as sp
from kvspec.spec.errors import Refused
from kvspec.spec.invariants import INVARIANTS, PoolSnapshot, check_all, snapshot
from kvspec.spec.profiles import get_profile

MODES = ("strict", "abstract")
USAGE_TOLERANCE = 1e-9


@dataclass(frozen=True)
class PoolConfig:
    num_blocks: int
    enable_caching: bool = True
    profile: str = "current"
    mode: str = "strict"

    def to_json(self) -> dict[str, Any]:
        return {
            "num_blocks": self.num_blocks,
            "enable_caching": self.enable_caching,
            "profile": self.profile,
            "mode": self.mode,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PoolConfig:
        return cls(
            num_blocks=int(data["num_blocks"]),
            enable_caching=bool(data.get("enable_caching", True)),
            profile=str(data.get("profile", "current")),
            mode=str(data.get("mode", "strict")),
        )


@dataclass
class Divergence(AssertionError):
    """The target and the spec disagree. ``caught_by`` names the invariant or observation."""

    caught_by: str
    message: str
    step_index: int
    steps: list[Step]
    config: PoolConfig
    spec_view: dict[str, Any] = field(default_factory=dict)
    target_view: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"[{self.caught_by}] {self.message}"

    def trace(self) -> Trace:
        return Trace(
            level="pool",
            config=self.config.to_json(),
            steps=list(self.steps),
            note=f"caught by {self.caught_by}: {self.message}",
        )


def observe(
    target: PoolTarget,
    num_blocks: int,
    known_hashes: Sequence[bytes],
    *,
    enable_caching: bool,
    count_null_refs: bool,
    allocated: dict[int, int] | None = None,
    parent_of: dict[bytes, bytes | None] | None = None,
    check_queue_order: bool = True,
) -> PoolSnapshot:
    """Everything the protocol lets us see of ``target``, as a spec snapshot."""
    index: dict[bytes, tuple[int, ...]] = {}
    for h in known_hashes:
        hit = target.get_cached_block(h)
        index[h] = () if hit is None else (hit,)
    return PoolSnapshot(
        num_blocks=num_blocks,
        enable_caching=enable_caching,
        count_null_refs=count_null_refs,
        ref_cnt=tuple(target.ref_cnt(b) for b in range(num_blocks)),
        block_hash=tuple(target.block_hash(b) for b in range(num_blocks)),
        free_queue=tuple(target.free_block_ids()),
        num_free_blocks=target.get_num_free_blocks(),
        usage=target.get_usage(),
        index=index,
        index_complete=False,
        allocated=dict(allocated or {}),
        parent_of=dict(parent_of or {}),
        check_queue_order=check_queue_order,
    )


def _view(snap: PoolSnapshot) -> dict[str, Any]:
    return {
        "ref_cnt": list(snap.ref_cnt),
        "block_hash": [None if h is None else h.decode(errors="replace") for h in snap.block_hash],
        "free_queue": list(snap.free_queue),
        "num_free_blocks": snap.num_free_blocks,
        "usage": snap.usage,
    }


# Each operation: how to run it on the spec (with the target's choice in abstract mode)
# and on the target. The spec functions raise Refused before any change.
SpecStep = Callable[[sp.PoolState, dict[str, Any], Any], Any]


def _spec_get_new_blocks(s: sp.PoolState, a: dict[str, Any], choice: Any) -> Any:
    return sp.get_new_blocks(s, a["num_blocks"], choice)


def _spec_fork_block(s: sp.PoolState, a: dict[str, Any], choice: Any) -> Any:
    return sp.fork_block(s, a["block_id"], choice)


SPEC_STEPS: dict[str, SpecStep] = {
    "get_new_blocks": _spec_get_new_blocks,
    "touch": lambda s, a, _c: sp.touch(s, a["block_ids"]),
    "free_blocks": lambda s, a, _c: sp.free_blocks(s, a["block_ids"]),
    "cache_block": lambda s, a, _c: sp.cache_block(
        s, a["block_id"], a["block_hash"], a.get("parent")
    ),
    "get_cached_block": lambda s, a, _c: sp.get_cached_block(s, a["block_hash"]),
    "reset_prefix_cache": lambda s, _a, _c: sp.reset_prefix_cache(s),
    "fork_block": _spec_fork_block,
}

TARGET_STEPS: dict[str, Callable[[PoolTarget, dict[str, Any]], Any]] = {
    "get_new_blocks": lambda t, a: t.get_new_blocks(a["num_blocks"]),
    "touch": lambda t, a: t.touch(list(a["block_ids"])),
    "free_blocks": lambda t, a: t.free_blocks(list(a["block_ids"])),
    "cache_block": lambda t, a: t.cache_block(a["block_id"], a["block_hash"]),
    "get_cached_block": lambda t, a: t.get_cached_block(a["block_hash"]),
    "reset_prefix_cache": lambda t, _a: t.reset_prefix_cache(),
    "fork_block": lambda t, a: t.fork_block(a["block_id"]),
}


@dataclass
class Outcome:
    """What one step did: the spec's result, or the refusal both sides agreed on."""

    result: Any = None
    refused: Refused | None = None


class PoolDriver:
    """Runs steps on the spec and a target together and judges every one."""

    def __init__(
        self,
        factory: Callable[..., PoolTarget],
        config: PoolConfig,
        *,
        on_check: Callable[[str], None] | None = None,
    ) -> None:
        if config.mode not in MODES:
            raise ValueError(f"unknown mode {config.mode!r}; expected one of {MODES}")
        self.config = config
        self.profile = get_profile(config.profile)
        self.spec = sp.init_pool(
            config.num_blocks, enable_caching=config.enable_caching, profile=self.profile
        )
        self.target = factory(
            config.num_blocks, enable_caching=config.enable_caching, profile=config.profile
        )
        self.steps: list[Step] = []
        self.known_hashes: list[bytes] = []
        self.on_check = on_check
        self.last_target_view: dict[str, Any] = {}

    @property
    def strict(self) -> bool:
        return self.config.mode == "strict"

    # ------------------------------------------------------------------ helpers

    def fail(self, caught_by: str, message: str, **views: Any) -> Divergence:
        return Divergence(
            caught_by=caught_by,
            message=message,
            step_index=len(self.steps),
            steps=list(self.steps),
            config=self.config,
            spec_view=views.get("spec_view", _view(snapshot(self.spec))),
            target_view=views.get("target_view", self.last_target_view),
        )

    def observe_target(self, allocated: dict[int, int] | None = None) -> PoolSnapshot:
        return observe(
            self.target,
            self.config.num_blocks,
            self.known_hashes,
            enable_caching=self.config.enable_caching,
            count_null_refs=self.profile.count_null_refs,
            allocated=allocated,
            parent_of=self.spec.parent_of,
            check_queue_order=self.strict,
        )

    def _remember_hash(self, step: Step) -> None:
        h = step.args.get("block_hash")
        if isinstance(h, bytes) and h not in self.known_hashes:
            self.known_hashes.append(h)

    # ------------------------------------------------------------------ one step

    def apply(self, step: Step) -> Outcome:
        """Take ``step`` on both sides, then check everything. Raises Divergence."""
        self._remember_hash(step)
        trial = self.spec.clone()
        try:
            spec_result = SPEC_STEPS[step.op](trial, step.args, None)
        except Refused as refusal:
            self.steps.append(step)
            self._expect_refusal(step, refusal)
            return Outcome(refused=refusal)

        ref_before = list(self.spec.ref_cnt)
        self.steps.append(step)
        try:
            target_result = TARGET_STEPS[step.op](self.target, step.args)
        except Exception as exc:  # noqa: BLE001 - any exception is a refusal
            raise self.fail(
                "refused-legal-operation",
                f"{step.describe()} is legal, but the target raised "
                f"{type(exc).__name__}: {exc}",
            ) from None

        if self.strict or step.op not in ("get_new_blocks", "fork_block"):
            self.spec = trial
        else:
            spec_result = self._adopt_choice(step, target_result)
        handed = spec_result if self.strict else target_result
        allocated = self._allocated(step, handed, ref_before)
        self._compare_result(step, spec_result, target_result)
        self.check(allocated)
        return Outcome(result=spec_result)

    def _adopt_choice(self, step: Step, target_result: Any) -> Any:
        """Abstract mode: accept the target's pick of free blocks if the spec allows it."""
        choice: Any = target_result
        if step.op == "fork_block" and target_result == step.args["block_id"]:
            choice = None
        try:
            return SPEC_STEPS[step.op](self.spec, step.args, choice)
        except Refused as refusal:
            raise self.fail(
                "no-double-allocation",
                f"{step.describe()}: the target handed out {target_result}, which the spec "
                f"does not allow ({refusal.message})",
            ) from None

    def _allocated(self, step: Step, handed: Any, ref_before: list[int]) -> dict[int, int]:
        """The blocks this step handed out, with their ref counts before it."""
        if step.op == "get_new_blocks":
            ids = list(handed)
        elif step.op == "fork_block" and handed != step.args["block_id"]:
            ids = [handed]
        else:
            return {}
        return {b: ref_before[b] for b in ids if 0 <= b < len(ref_before)}

    def _expect_refusal(self, step: Step, refusal: Refused) -> None:
        before = self.observe_target()
        try:
            TARGET_STEPS[step.op](self.target, step.args)
        except Exception:  # noqa: BLE001 - the expected outcome
            after = self.observe_target()
            changed = _differences(before, after, compare_queue=True)
            if changed:
                raise self.fail(
                    "refusal-changes-nothing",
                    f"{step.describe()} was refused, but it changed {', '.join(changed)}",
                    target_view=_view(after),
                ) from None
            return
        raise self.fail(
            "refuses-bad-input",
            f"{step.describe()} must be refused ({refusal.reason}: {refusal.message}), "
            "but the target accepted it",
            target_view=self._view_after_accepting(),
        )

    def _view_after_accepting(self) -> dict[str, Any]:
        """What the target looks like after accepting bad input (it may be too broken to say)."""
        try:
            return _view(self.observe_target())
        except Exception as exc:  # noqa: BLE001 - a broken target is itself the finding
            return {"observation failed": f"{type(exc).__name__}: {exc}"}

    def _compare_result(self, step: Step, spec_result: Any, target_result: Any) -> None:
        if step.op == "get_new_blocks":
            got = list(target_result)
            if self.strict and got != list(spec_result):
                raise self.fail(
                    "handed-out-ids",
                    f"{step.describe()}: spec hands out {list(spec_result)}, target {got}",
                )
            if len(got) != step.args["num_blocks"]:
                raise self.fail(
                    "handed-out-ids",
                    f"{step.describe()}: the target handed out {len(got)} blocks",
                )
        elif step.op == "fork_block":
            if self.strict and target_result != spec_result:
                raise self.fail(
                    "fork-result",
                    f"{step.describe()}: spec returns block {spec_result}, "
                    f"target {target_result}",
                )
        elif step.op == "get_cached_block":
            if self.strict and target_result != spec_result:
                raise self.fail(
                    "lookup-result",
                    f"{step.describe()}: spec finds {spec_result}, target {target_result}",
                )
            if (target_result is None) != (spec_result is None):
                raise self.fail(
                    "lookup-result",
                    f"{step.describe()}: spec finds {spec_result}, target {target_result}",
                )
        elif step.op == "reset_prefix_cache" and bool(target_result) != bool(spec_result):
            raise self.fail(
                "reset-result",
                f"reset_prefix_cache: spec returns {spec_result}, target {target_result}",
            )

    # ------------------------------------------------------------------ checking

    def check(self, allocated: dict[int, int] | None = None) -> None:
        """Invariants on both sides, then every observation compared."""
        target_snap = self.observe_target(allocated)
        self.last_target_view = _view(target_snap)
        spec_snap = snapshot(self.spec, allocated, check_queue_order=self.strict)
        for name, inv in INVARIANTS.items():
            if self.on_check:
                self.on_check(name)
            broken = inv.check(target_snap)
            if broken:
                raise self.fail(name, "target: " + "; ".join(broken))
        spec_broken = check_all(spec_snap)
        if spec_broken:
            name, msgs = next(iter(spec_broken.items()))
            raise self.fail(f"spec:{name}", "the spec itself breaks it: " + "; ".join(msgs))
        for what in _differences(spec_snap, target_snap, compare_queue=self.strict):
            raise self.fail(
                what,
                f"{what} differs: spec {_field(spec_snap, what)!r}, "
                f"target {_field(target_snap, what)!r}",
            )


def _field(snap: PoolSnapshot, what: str) -> Any:
    if what == "lookup":
        return {h.decode(errors="replace"): v for h, v in snap.index.items()}
    return getattr(snap, what)


def _differences(a: PoolSnapshot, b: PoolSnapshot, *, compare_queue: bool) -> list[str]:
    """Observation names on which two snapshots disagree (simplest first)."""
    out: list[str] = []
    if a.ref_cnt != b.ref_cnt:
        out.append("ref_cnt")
    if a.block_hash != b.block_hash:
        out.append("block_hash")
    if a.num_free_blocks != b.num_free_blocks:
        out.append("num_free_blocks")
    if abs(a.usage - b.usage) > USAGE_TOLERANCE:
        out.append("usage")
    same_members = sorted(a.free_queue) == sorted(b.free_queue)
    if not same_members or (compare_queue and a.free_queue != b.free_queue):
        out.append("free_queue")
    first_a = {h: a.index.get(h, ())[:1] for h in b.index}
    first_b = {h: v[:1] for h, v in b.index.items()}
    same_hits = {h for h, v in first_a.items() if v} == {h for h, v in first_b.items() if v}
    if not same_hits or (compare_queue and first_a != first_b):
        out.append("lookup")
    return out


def replay_steps(
    factory: Callable[..., PoolTarget], config: PoolConfig, steps: Sequence[Step]
) -> PoolDriver:
    """Run ``steps`` through a fresh driver; raises Divergence at the first disagreement."""
    driver = PoolDriver(factory, config)
    driver.check()
    for step in steps:
        driver.apply(step)
    return driver
