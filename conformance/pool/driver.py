"""Drive the spec and a pool target in lockstep, one pool operation at a time.

Every engine goes through :class:`PoolDriver`: an engine decides *which* step to take, the
driver takes it on both sides and judges it. So a trace replayed from a file is judged
exactly as it was when it was found.

After each step, in this order:

1. the target refused exactly when the spec refused, and a refused step changed no
   observation of the target;
2. every spec invariant holds on the *spec's own state*. One that holds after any sequence
   and breaks is a spec error (``spec:NAME``), never blamed on the target. One that assumes
   a usage discipline (``eviction-order``) and breaks shows that the sequence left that
   discipline: from then on that invariant is *waived* (not checked, on either side, and
   the report says since when), and everything else is still judged;
3. every spec invariant holds on the target's observations (a target bug is reported by the
   rule it breaks);
4. return values agree (ids handed out, lookups, fork and reset results);
5. every observation of the target equals the spec's.

In ``strict`` mode the target must make exactly the spec's choices. In ``abstract`` mode
the target may hand out any free block: the spec adopts the choice when it is one the spec
allows, and queue order is not compared.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from kvspec.conformance.level import copy_target
from kvspec.conformance.outcome import Divergence, Outcome, OutsideScope
from kvspec.conformance.pool.protocol import PoolTarget
from kvspec.conformance.trace import Step
from kvspec.spec import pool as sp
from kvspec.spec.errors import Refused
from kvspec.spec.invariants import INVARIANTS, PoolSnapshot, snapshot
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


def view(snap: PoolSnapshot) -> dict[str, Any]:
    """A snapshot as the report shows it."""
    return {
        "ref_cnt": list(snap.ref_cnt),
        "block_hash": [None if h is None else h.decode(errors="replace") for h in snap.block_hash],
        "free_queue": list(snap.free_queue),
        "num_free_blocks": snap.num_free_blocks,
        "usage": snap.usage,
    }


# Each operation on the spec (with the target's choice of blocks in abstract mode) and on
# the target. The spec functions raise Refused before any change.
SpecStep = Callable[[sp.PoolState, dict[str, Any], Any], Any]

SPEC_STEPS: dict[str, SpecStep] = {
    "get_new_blocks": lambda s, a, choice: sp.get_new_blocks(s, a["num_blocks"], choice),
    "touch": lambda s, a, _c: sp.touch(s, a["block_ids"]),
    "free_blocks": lambda s, a, _c: sp.free_blocks(s, a["block_ids"]),
    "cache_block": lambda s, a, _c: sp.cache_block(
        s, a["block_id"], a["block_hash"], a.get("parent")
    ),
    "get_cached_block": lambda s, a, _c: sp.get_cached_block(s, a["block_hash"]),
    "reset_prefix_cache": lambda s, _a, _c: sp.reset_prefix_cache(s),
    "fork_block": lambda s, a, choice: sp.fork_block(s, a["block_id"], choice),
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

#: Operations that hand out blocks: in abstract mode the target picks which.
CHOOSING_OPS = frozenset({"get_new_blocks", "fork_block"})


class PoolDriver:
    """Runs steps on the spec and a target together and judges every one.

    ``judge_bad_input=False`` (a run that does not check bad input) turns a step the spec
    refuses but the target accepts, or refuses with side effects, into
    :class:`~kvspec.conformance.outcome.OutsideScope` instead of a divergence.
    """

    def __init__(
        self,
        factory: Callable[..., PoolTarget],
        config: PoolConfig,
        *,
        on_check: Callable[[str], None] | None = None,
        judge_bad_input: bool = True,
    ) -> None:
        if config.mode not in MODES:
            raise ValueError(f"unknown mode {config.mode!r}; expected one of {MODES}")
        self.config = config
        self.profile = get_profile(config.profile)
        self.spec = sp.init_pool(
            config.num_blocks, enable_caching=config.enable_caching, profile=self.profile
        )
        self.factory = factory
        self.target = self._new_target()
        self.steps: list[Step] = []
        self.known_hashes: list[bytes] = []
        self.on_check = on_check
        self.judge_bad_input = judge_bad_input
        self.target_snap: PoolSnapshot | None = None
        self._state_key: Hashable | None = None
        self.waived: dict[str, str] = {}
        """Invariants no longer checked, each with why: the sequence left the usage
        discipline they assume."""
        self._spec_held: PoolSnapshot | None = None
        """The last spec snapshot every invariant not waived held on (:meth:`check_spec`)."""

    @property
    def strict(self) -> bool:
        return self.config.mode == "strict"

    # ------------------------------------------------------------------ helpers

    def fail(self, caught_by: str, message: str, *, spec_error: bool = False,
             target_view: dict[str, Any] | None = None) -> Divergence:
        """A divergence at the current step, both sides shown after it."""
        if target_view is None:
            target_view = view(self.target_snap) if self.target_snap else {}
        return Divergence(
            caught_by=caught_by,
            message=message,
            level="pool",
            config=self.config,
            steps=list(self.steps),
            spec_view=view(snapshot(self.spec)),
            target_view=target_view,
            spec_error=spec_error,
            waived=dict(self.waived),
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
        """Observe lookups of every hash ever cached. (A lookup of a hash never cached is
        judged by its own result; observing it on every later step would add nothing.)"""
        h = step.args.get("block_hash")
        if step.op == "cache_block" and isinstance(h, bytes) and h not in self.known_hashes:
            self.known_hashes.append(h)

    def _new_target(self) -> PoolTarget:
        c = self.config
        return self.factory(c.num_blocks, enable_caching=c.enable_caching, profile=c.profile)

    def _rebuilt_target(self) -> PoolTarget:
        """A fresh target brought to this one's state by replaying the steps so far (a
        refused step raises there as it did here)."""
        target = self._new_target()
        for step in self.steps:
            # A refusal raises here as it did when the step was judged.
            with contextlib.suppress(Exception):
                TARGET_STEPS[step.op](target, step.args)
        return target

    def clone(self) -> PoolDriver:
        """An independent copy: spec, target (:func:`~kvspec.conformance.level.copy_target`)
        and the steps so far."""
        twin = copy.copy(self)
        twin.spec = self.spec.clone()
        twin.target = copy_target(self.target, self._rebuilt_target)
        twin.steps = list(self.steps)
        twin.known_hashes = list(self.known_hashes)
        twin.waived = dict(self.waived)
        return twin

    def state_key(self) -> Hashable:
        """The spec's state and the target's last observation (lookups included)."""
        if self._state_key is None:
            snap = self.target_snap
            assert snap is not None, "state_key before the first check"
            target = (snap.ref_cnt, snap.block_hash, snap.free_queue, snap.num_free_blocks,
                      round(snap.usage, 9), tuple(sorted(snap.index.items())))
            self._state_key = (self.spec.key(), tuple(sorted(self.waived)), target)
        return self._state_key

    # ------------------------------------------------------------------ one step

    def apply(self, step: Step) -> Outcome:
        """Take ``step`` on both sides, then check everything. Raises Divergence."""
        self._state_key = None
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
            self.target_snap = self._observe_safely()
            self.spec = trial
            raise self.fail(
                "refused-legal-operation",
                f"{step.describe()} is legal, but the target raised "
                f"{type(exc).__name__}: {exc}",
            ) from None

        if self.strict or step.op not in CHOOSING_OPS:
            self.spec = trial
        else:
            spec_result = self._adopt_choice(step, target_result)
        handed = spec_result if self.strict else target_result
        allocated = self._allocated(step, handed, ref_before)
        self.check(allocated, step=step, results=(spec_result, target_result))
        return Outcome(result=spec_result)

    def judge_refusal_in_place(self, step: Step) -> bool:
        """If the spec refuses ``step``: judge the target's refusal here, without keeping
        the step (a correct target is left as it was), and return True. False when the spec
        accepts it (nothing done). Only in runs that judge bad input: elsewhere a target
        accepting it would be left changed."""
        if not self.judge_bad_input:
            return False
        try:
            SPEC_STEPS[step.op](self.spec.clone(), step.args, None)
        except Refused as refusal:
            self.steps.append(step)
            try:
                self._expect_refusal(step, refusal)
            finally:
                self.steps.pop()
            return True
        return False

    def _observe_safely(self) -> PoolSnapshot | None:
        """The target's observations, or None when it is too broken to be observed."""
        try:
            return self.observe_target()
        except Exception:  # noqa: BLE001 - a broken target is itself the finding
            return None

    def _adopt_choice(self, step: Step, target_result: Any) -> Any:
        """Abstract mode: accept the target's pick of free blocks if the spec allows it."""
        choice: Any = target_result
        if step.op == "fork_block" and target_result == step.args["block_id"]:
            choice = None
        try:
            return SPEC_STEPS[step.op](self.spec, step.args, choice)
        except Refused as refusal:
            self.target_snap = self._observe_safely()
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
        return {b: ref_before[b] for b in ids if isinstance(b, int) and 0 <= b < len(ref_before)}

    def _expect_refusal(self, step: Step, refusal: Refused) -> None:
        # The last observation is the state before this step (nothing ran since); the
        # first step of a driver never checked has none yet.
        before = self.target_snap or self.observe_target()
        try:
            TARGET_STEPS[step.op](self.target, step.args)
        except Exception:  # noqa: BLE001 - the expected outcome
            after = self.observe_target()
            self.target_snap = after
            changed = differences(before, after, compare_queue=True)
            if changed:
                self._out_of_scope_unless_judged(step, "refused it with side effects")
                raise self.fail(
                    "refusal-changes-nothing",
                    f"{step.describe()} was refused, but it changed {', '.join(changed)}",
                ) from None
            return
        self.target_snap = self._observe_safely()
        self._out_of_scope_unless_judged(step, "accepted it")
        raise self.fail(
            "refuses-bad-input",
            f"{step.describe()} must be refused ({refusal.reason}: {refusal.message}), "
            "but the target accepted it",
            target_view=view(self.target_snap) if self.target_snap else
            {"observation failed": "the target cannot be observed after accepting it"},
        )

    def _out_of_scope_unless_judged(self, step: Step, what_target_did: str) -> None:
        if not self.judge_bad_input:
            raise OutsideScope(
                len(self.steps),
                f"{step.describe()} is refused by the spec and the target {what_target_did}; "
                "this run does not check bad input",
            )

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
            if (self.strict and target_result != spec_result) or (
                (target_result is None) != (spec_result is None)
            ):
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

    def check(
        self,
        allocated: dict[int, int] | None = None,
        *,
        step: Step | None = None,
        results: tuple[Any, Any] | None = None,
    ) -> None:
        """The spec's invariants, the target's, the step's results, then every observation."""
        self.target_snap = target_snap = self.observe_target(allocated)
        strict = self.strict
        spec_snap = snapshot(self.spec, allocated, check_queue_order=strict)
        self.check_spec(spec_snap)
        differ = differences(spec_snap, target_snap, compare_queue=strict)
        on_check = self.on_check
        for name, inv in INVARIANTS.items():
            if name in self.waived:
                continue
            if on_check:
                on_check(name)
            # In strict mode, observations equal to the spec's (which holds every invariant,
            # just checked) hold them too: run them only to name what differs.
            if not differ and strict:
                continue
            broken = inv.check(target_snap)
            if broken:
                raise self.fail(name, "target: " + "; ".join(broken))
        if step is not None and results is not None:
            self._compare_result(step, *results)
        for what in differ:
            raise self.fail(
                what,
                f"{what} differs: spec {_field(spec_snap, what)!r}, "
                f"target {_field(target_snap, what)!r}",
            )

    def check_spec(self, spec_snap: PoolSnapshot) -> None:
        """The spec's own invariants, first: a broken one is the spec's, not the target's
        (or, for one that assumes a usage discipline, a sign the sequence left it).

        Invariants are functions of a snapshot alone, so a snapshot equal to the last one
        that held every invariant not waived (after a lookup, say) holds them too: they
        are not run again. Waivers are only ever added, so that stays true."""
        if spec_snap == self._spec_held:
            return
        held = True
        for name, inv in INVARIANTS.items():
            if name in self.waived:
                continue
            broken = inv.check(spec_snap)
            if not broken:
                continue
            if inv.assumes is not None:
                self.waived[name] = (
                    f"since step {len(self.steps)}, which leaves the usage discipline it "
                    f"assumes ({inv.assumes}): {'; '.join(broken)}"
                )
                held = False
                continue
            raise self.fail(f"spec:{name}", "the spec itself breaks it: " + "; ".join(broken),
                            spec_error=True)
        self._spec_held = spec_snap if held else None


def _field(snap: PoolSnapshot, what: str) -> Any:
    if what == "lookup":
        return {h.decode(errors="replace"): v for h, v in snap.index.items()}
    return getattr(snap, what)


def differences(a: PoolSnapshot, b: PoolSnapshot, *, compare_queue: bool) -> list[str]:
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
    if a.free_queue != b.free_queue and (
            compare_queue or sorted(a.free_queue) != sorted(b.free_queue)):
        out.append("free_queue")
    first_a = {h: a.index.get(h, ())[:1] for h in b.index}
    first_b = {h: v[:1] for h, v in b.index.items()}
    same_hits = {h for h, v in first_a.items() if v} == {h for h, v in first_b.items() if v}
    if not same_hits or (compare_queue and first_a != first_b):
        out.append("lookup")
    return out


def start_driver(
    factory: Callable[..., PoolTarget],
    config: PoolConfig,
    *,
    on_check: Callable[[str], None] | None = None,
    judge_bad_input: bool = True,
) -> PoolDriver:
    """A driver over a fresh target, its fresh state already judged."""
    driver = PoolDriver(factory, config, on_check=on_check, judge_bad_input=judge_bad_input)
    driver.check()
    return driver


def replay_steps(
    factory: Callable[..., PoolTarget], config: PoolConfig, steps: Sequence[Step]
) -> PoolDriver:
    """Run ``steps`` through a fresh driver; raises Divergence at the first disagreement."""
    driver = start_driver(factory, config)
    for step in steps:
        driver.apply(step)
    return driver
