"""Drive the spec's KV-cache manager and a target manager in lockstep, one step at a time.

The request-level twin of :class:`kvspec.conformance.pool.driver.PoolDriver`: the Hypothesis machine
(:mod:`kvspec.conformance.manager.machine`) decides *which* step to take, and this driver takes
it on both sides and judges it, so ``kvspec replay`` judges a trace exactly as it was
judged when found.

The driver is also the scheduler's memory. It keeps each request's tokens (a spec
:class:`~kvspec.spec.request.Request`), which requests are running, the admissions it made (the
ledger the statistics must match) and the *true content* of every block it caused to be
written (:func:`kvspec.spec.manager_invariants.note_allocation`). A stale or colliding hash then
shows up as a hit whose recorded content differs from the request's prefix
(``hit-content``), whatever hash function the target uses.

After each step, in this order:

1. the target refused exactly when the spec refused, and a refusal (or an
   ``allocate_slots`` that returned ``None``) changed no observation of the target;
2. ``allocate_slots`` succeeded on both sides or on neither;
3. every pool invariant (:mod:`kvspec.spec.invariants`) and every manager invariant
   (:mod:`kvspec.spec.manager_invariants`) holds on the *spec's own state* first: a broken
   one is a spec error (``spec:NAME``), never blamed on the target, unless it assumes a
   usage discipline in this profile (``hit-content`` in ``classic``: no LoRA adapter named
   like a salt); then the sequence left it, and the invariant is waived from there on. (The
   manager is the caller that keeps the discipline the pool's ``eviction-order`` assumes,
   so at this level that invariant holds after any sequence.) Then the same invariants on
   the target's observations;
4. return values agree (hit ids and length, new block ids, reset result);
5. every observation agrees: ref counts, block hashes, free queue, free count, usage,
   each request's table and block hashes, the statistics.

Invariants come before the value comparisons so that a bug is reported by the rule it
breaks (``hit-cap``, ``no-double-allocation``...) when one does. Only ``strict`` mode
exists at this level: the target must make exactly the spec's choices.

Trusted inputs (:mod:`kvspec.conformance.manager.protocol`): ``get_computed_blocks`` looks
up only requests that hold no blocks; a request is admitted by an ``allocate_slots`` right
after that lookup, with the hits it returns; computed tokens advance only over slots
allocated to the request. A step outside these (a lookup of a request holding blocks, an
admission without its lookup, hits beyond the cap, stale or out of range, more computed
tokens than slots: what a hand-edited trace or a minimizer candidate could send) is
:class:`~kvspec.conformance.outcome.OutsideScope`, not a divergence.

Hash bytes are compared too, unless the config says ``compare_hashes=False`` (a target
whose factory sets ``opaque_hashes = True`` because it hashes blocks another way). Then
the content record alone judges every key, and ``eviction-order`` reads the parent
structure from the target's own hash chains.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

from kvspec.conformance.level import copy_target
from kvspec.conformance.manager.protocol import STATS_FIELDS, ManagerTarget
from kvspec.conformance.outcome import Divergence, Outcome, OutsideScope
from kvspec.conformance.trace import Step
from kvspec.spec import errors
from kvspec.spec import manager as sm
from kvspec.spec import manager_invariants as mi
from kvspec.spec.errors import Refused
from kvspec.spec.hashing import LoRARequest
from kvspec.spec.invariants import INVARIANTS, PoolSnapshot
from kvspec.spec.invariants import check_all as check_pool
from kvspec.spec.invariants import snapshot as pool_snapshot
from kvspec.spec.profiles import get_profile
from kvspec.spec.request import Request

MODES = ("strict",)
USAGE_TOLERANCE = 1e-9

# Refusal reasons the driver adds for the scheduler's side of the protocol.
UNKNOWN_REQUEST = "unknown-request"
DUPLICATE_REQUEST = "duplicate-request"
COMPUTED_OUT_OF_RANGE = "computed-out-of-range"

#: Operations that change the spec's manager state (the others touch requests only).
CHANGES_MANAGER = frozenset({"allocate_slots", "free", "preempt", "reset_prefix_cache"})

#: The pool invariant that judges blocks handed out (see :func:`_with_allocated`).
ALLOCATION_INVARIANT = "no-double-allocation"

#: The pool invariants judged on the blocks as they are (see :func:`_with_allocated`).
POOL_NAMES_BUT_ALLOCATION = [n for n in INVARIANTS if n != ALLOCATION_INVARIANT]

#: Refusals of hits the protocol never passes (see "Trusted inputs" above).
UNTRUSTED_INPUT = frozenset({sm.HIT_BEYOND_CAP, sm.STALE_HIT, errors.BLOCK_OUT_OF_RANGE})


@dataclass(frozen=True)
class ManagerConfig:
    num_blocks: int
    block_size: int
    enable_caching: bool = True
    profile: str = "current"
    mode: str = "strict"
    compare_hashes: bool = True

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ManagerConfig:
        return cls(
            num_blocks=int(data["num_blocks"]),
            block_size=int(data["block_size"]),
            enable_caching=bool(data.get("enable_caching", True)),
            profile=str(data.get("profile", "current")),
            mode=str(data.get("mode", "strict")),
            compare_hashes=bool(data.get("compare_hashes", True)),
        )


@dataclass
class Observation:
    """Everything the manager protocol lets us see, plus the request ids it was read for."""

    pool: PoolSnapshot
    tables: dict[str, tuple[int, ...]]
    hashes: dict[str, tuple[bytes, ...]]
    stats: tuple[int, ...] | None

    def view(self) -> dict[str, Any]:
        return {
            "ref_cnt": list(self.pool.ref_cnt),
            "block_hash": [_short(h) for h in self.pool.block_hash],
            "free_queue": list(self.pool.free_queue),
            "num_free_blocks": self.pool.num_free_blocks,
            "usage": round(self.pool.usage, 6),
            "tables": {r: list(t) for r, t in self.tables.items() if t},
            "stats": None if self.stats is None else dict(zip(STATS_FIELDS, self.stats,
                                                              strict=False)),
        }


def _short(h: bytes | None) -> str | None:
    return None if h is None else h.hex()[:8]


def _differences(a: Observation, b: Observation, *, compare_hashes: bool = True) -> list[str]:
    """Observation names on which two observations disagree (simplest first).

    ``compare_hashes=False`` leaves hash bytes out (a target that hashes another way).
    """
    out: list[str] = []
    if a.pool.ref_cnt != b.pool.ref_cnt:
        out.append("ref_cnt")
    if compare_hashes and a.pool.block_hash != b.pool.block_hash:
        out.append("block_hash")
    if a.pool.num_free_blocks != b.pool.num_free_blocks:
        out.append("num_free_blocks")
    if abs(a.pool.usage - b.pool.usage) > USAGE_TOLERANCE:
        out.append("usage")
    if a.pool.free_queue != b.pool.free_queue:
        out.append("free_queue")
    if a.tables != b.tables:
        out.append("block_ids")
    if compare_hashes and a.hashes != b.hashes:
        out.append("request_block_hashes")
    if a.stats is not None and b.stats is not None and a.stats != b.stats:
        out.append("prefix_cache_stats")
    return out


def _describe_difference(what: str, spec: Observation, target: Observation) -> str:
    if what in ("block_ids", "request_block_hashes"):
        s, t = (spec.tables, target.tables) if what == "block_ids" else (spec.hashes,
                                                                        target.hashes)
        for rid in s:
            if s[rid] != t.get(rid):
                show = (lambda v: list(v)) if what == "block_ids" else (
                    lambda v: [_short(h) for h in v])
                return (f"{what} of request {rid!r} differ: spec {show(s[rid])}, "
                        f"target {show(t.get(rid, ()))}")
    if what == "prefix_cache_stats":
        return f"prefix_cache_stats differ: spec {spec.stats}, target {target.stats}"
    if what == "block_hash":
        return (f"block_hash differs: spec {[_short(h) for h in spec.pool.block_hash]}, "
                f"target {[_short(h) for h in target.pool.block_hash]}")
    return (f"{what} differs: spec {getattr(spec.pool, what)!r}, "
            f"target {getattr(target.pool, what)!r}")


@dataclass
class _StepFacts:
    """What the driver learned from one step, for the invariants of this step."""

    target_hits: tuple[mi.HitView, ...] = ()
    spec_hits: tuple[mi.HitView, ...] = ()
    allocated: dict[int, int] = field(default_factory=dict)
    """The blocks the target's ``allocate_slots`` returned, with their ref counts before."""
    spec_allocated: dict[int, int] = field(default_factory=dict)
    """The same for the spec's own result: the spec is judged on what *it* handed out, so
    a target returning other blocks is never reported as a spec error."""


class ManagerDriver:
    """Runs manager steps on the spec and a target together and judges every one."""

    def __init__(
        self,
        factory: Callable[..., ManagerTarget],
        config: ManagerConfig,
        *,
        on_check: Callable[[str], None] | None = None,
        judge_bad_input: bool = True,
    ) -> None:
        if config.mode not in MODES:
            raise ValueError(
                f"the manager level runs in strict mode only, not {config.mode!r}"
            )
        self.config = config
        self.profile = get_profile(config.profile)
        self.spec = sm.init_manager(
            config.num_blocks, config.block_size, enable_caching=config.enable_caching,
            profile=self.profile,
        )
        self.factory = factory
        self.target = self._new_target()
        self.on_check = on_check
        self.steps: list[Step] = []
        self.requests: dict[str, Request] = {}
        self.running: set[str] = set()
        self.contents: dict[int, mi.BlockContent] = {}
        self.admissions: list[mi.Admission] = []
        self.judge_bad_input = judge_bad_input
        self.target_obs: Observation | None = None
        self._state_key: Hashable | None = None
        self.looked_up: str | None = None
        """The request the previous step looked up (admitting it is in scope now)."""
        self.waived: dict[str, str] = {}
        """Invariants no longer checked, each with why (see :meth:`check`)."""
        self._spec_pool_held: PoolSnapshot | None = None
        self._spec_manager_held: tuple[Hashable, dict[int, mi.BlockContent],
                                       list[mi.Admission]] | None = None
        """The last spec snapshots every invariant held on (see :meth:`_check_spec`)."""

    # ------------------------------------------------------------------ helpers

    def fail(self, caught_by: str, message: str, *, spec_error: bool = False,
             target_view: dict[str, Any] | None = None) -> Divergence:
        """A divergence at the current step, both sides shown after it."""
        if target_view is None:
            target_view = self.target_obs.view() if self.target_obs else {}
        return Divergence(
            caught_by=caught_by,
            message=message,
            level="manager",
            config=self.config,
            steps=list(self.steps),
            spec_view=self.observe_spec().view(),
            target_view=target_view,
            spec_error=spec_error,
            waived=dict(self.waived),
        )

    def _new_target(self) -> ManagerTarget:
        c = self.config
        return self.factory(c.num_blocks, c.block_size, enable_caching=c.enable_caching,
                            profile=c.profile)

    def _rebuilt_target(self) -> ManagerTarget:
        """A fresh target brought to this one's state by replaying the steps so far (a
        refused step raises there as it did here)."""
        target = self._new_target()
        for step in self.steps:
            # A refusal raises here as it did when the step was judged.
            with contextlib.suppress(Exception):
                _call_target(target, step)
        return target

    def clone(self) -> ManagerDriver:
        """An independent copy: spec, target, requests and the driver's records."""
        twin = copy.copy(self)
        twin.spec = self.spec.clone()
        twin.target = copy_target(self.target, self._rebuilt_target)
        twin.steps = list(self.steps)
        twin.requests = {rid: _copy_request(req) for rid, req in self.requests.items()}
        twin.running = set(self.running)
        twin.contents = dict(self.contents)
        twin.admissions = list(self.admissions)
        twin.waived = dict(self.waived)
        return twin

    def state_key(self) -> Hashable:
        """The spec's state, the requests, and the target's last observation."""
        if self._state_key is None:
            obs = self.target_obs
            assert obs is not None, "state_key before the first check"
            requests = tuple(
                (rid, req.all_token_ids, req.lora, req.cache_salt, req.num_computed_tokens,
                 req.num_preemptions, rid in self.running)
                for rid, req in sorted(self.requests.items())
            )
            target = (obs.pool.ref_cnt, obs.pool.block_hash, obs.pool.free_queue,
                      obs.pool.num_free_blocks, round(obs.pool.usage, 9),
                      tuple(sorted(obs.tables.items())), tuple(sorted(obs.hashes.items())),
                      obs.stats)
            self._state_key = (self.spec.key(), requests, tuple(sorted(self.contents.items())),
                               tuple(self.admissions), self.looked_up,
                               tuple(sorted(self.waived)), target)
        return self._state_key

    def request(self, request_id: str, op: str) -> Request:
        """The spec's record of a request; a step naming an unknown id is refused."""
        try:
            return self.requests[request_id]
        except KeyError:
            raise Refused(
                UNKNOWN_REQUEST, f"{op}: request {request_id!r} was never added"
            ) from None

    def observe_target(self) -> Observation:
        t, n = self.target, self.config.num_blocks
        stats = t.get_prefix_cache_stats()
        hashes = {r: tuple(map(bytes, t.request_block_hashes(r))) for r in self.requests}
        pool = PoolSnapshot(
            num_blocks=n,
            enable_caching=self.config.enable_caching,
            count_null_refs=self.profile.count_null_refs,
            ref_cnt=tuple(map(t.ref_cnt, range(n))),
            block_hash=tuple(map(t.block_hash, range(n))),
            free_queue=tuple(t.free_block_ids()),
            num_free_blocks=t.get_num_free_blocks(),
            usage=t.get_usage(),
            index={},
            index_complete=False,
            parent_of=self.spec.pool.parent_of if self.config.compare_hashes
            else _parents(hashes),
        )
        return Observation(
            pool=pool,
            tables={r: tuple(t.get_block_ids(r)) for r in self.requests},
            hashes=hashes,
            stats=None if stats is None else tuple(map(int, stats)),
        )

    def observe_spec(self, allocated: dict[int, int] | None = None) -> Observation:
        return Observation(
            pool=pool_snapshot(self.spec.pool, allocated),
            tables={r: tuple(sm.get_block_ids(self.spec, r)) for r in self.requests},
            hashes={r: tuple(req.block_hashes) for r, req in self.requests.items()},
            stats=sm.prefix_cache_stats(self.spec).as_tuple(),
        )

    # ------------------------------------------------------------------ one step

    def apply(self, step: Step) -> Outcome:
        """Take ``step`` on both sides, then check everything. Raises Divergence."""
        self._state_key = None
        looked_up, self.looked_up = self.looked_up, None
        handler = getattr(self, f"_spec_{step.op}", None)
        if handler is None:
            raise ValueError(f"unknown manager operation {step.op!r}")
        # Steps that change the manager run on a copy, kept only if the target agrees.
        trial = self.spec.clone() if step.op in CHANGES_MANAGER else self.spec
        try:
            effect = handler(trial, **step.args)
        except Refused as refusal:
            self.steps.append(step)
            self._expect_refusal(step, refusal)
            return Outcome(refused=refusal)
        self.steps.append(step)
        self._check_scope(step, looked_up)
        if step.op == "get_computed_blocks":
            self.looked_up = step.args["request_id"]

        before = self.target_obs if step.op == "allocate_slots" else None
        try:
            target_result = _call_target(self.target, step)
        except Exception as exc:  # noqa: BLE001 - any exception is a refusal
            spec_says = ("returns None (cannot schedule)" if step.op == "allocate_slots"
                         and effect.result is None else "is legal")
            self.spec = trial
            self.target_obs = self._observe_safely()
            raise self.fail(
                "refused-legal-operation",
                f"{step.describe()} {spec_says}, but the target raised "
                f"{type(exc).__name__}: {exc}",
            ) from None

        spec_ref_before = self.spec.pool.ref_cnt
        self.spec = trial
        facts = self._commit(step, effect, target_result, before)
        if step.op == "allocate_slots" and effect.result is not None:
            facts.spec_allocated = {b: spec_ref_before[b] for b in effect.result}
        target, spec = self.observe_target(), self.observe_spec(facts.spec_allocated)
        self.check(facts, target, spec)
        self._compare_result(step, effect.result, target_result)
        self.compare_observations(target, spec)
        return Outcome(result=effect.result)

    def _check_scope(self, step: Step, looked_up: str | None) -> None:
        """Raise OutsideScope for a step the spec accepts but the protocol never sends
        (see "Trusted inputs" in the module docstring)."""
        rid = step.args.get("request_id")
        n = len(self.steps) + (0 if self.steps and self.steps[-1] is step else 1)
        if step.op == "allocate_slots" and rid not in self.running and looked_up != rid:
            raise OutsideScope(
                n, f"{step.describe()} admits request {rid!r} without looking it up first; a "
                "scheduler calls get_computed_blocks right before it admits a request",
            )
        if step.op == "get_computed_blocks" and sm.get_block_ids(self.spec, rid):
            raise OutsideScope(
                n, f"{step.describe()}: request {rid!r} holds blocks; a scheduler looks up "
                "only requests it is about to admit (waiting or preempted)",
            )
        if step.op == "set_num_computed_tokens":
            slots = len(sm.get_block_ids(self.spec, rid)) * self.config.block_size
            if step.args["num_computed_tokens"] > slots:
                raise OutsideScope(
                    n, f"{step.describe()}: request {rid!r} has slots for {slots} tokens; a "
                    "scheduler advances computed tokens only over slots it allocated",
                )

    def judge_refusal_in_place(self, step: Step) -> bool:
        """If the spec refuses ``step``: judge the target's refusal here, without keeping
        the step (a correct target is left as it was), and return True; if the step is out
        of scope, raise OutsideScope. False when it must be taken (nothing done). Only in
        runs that judge bad input."""
        if not self.judge_bad_input:
            return False
        handler = getattr(self, f"_spec_{step.op}")
        trial = self.spec.clone() if step.op in CHANGES_MANAGER else self.spec
        try:
            handler(trial, **step.args)
        except Refused as refusal:
            self.steps.append(step)
            try:
                self._expect_refusal(step, refusal)
            finally:
                self.steps.pop()
            return True
        self._check_scope(step, self.looked_up)
        return False

    def _observe_safely(self) -> Observation | None:
        """The target's observations, or None when it is too broken to be observed."""
        try:
            return self.observe_target()
        except Exception:  # noqa: BLE001 - a broken target is itself the finding
            return None

    def _commit(
        self, step: Step, effect: _Effect, target_result: Any, before: Observation | None
    ) -> _StepFacts:
        """Apply the driver's own bookkeeping for a step both sides accepted."""
        effect.apply_to_requests()
        facts = _StepFacts()
        if step.op == "get_computed_blocks":
            req = self.requests[step.args["request_id"]]
            ids, num = _pair(target_result)
            target_view = mi.hit_view(req, ids, num)
            spec_ids, spec_num = effect.result
            # Both views carry the same true content: computed once for the two.
            facts.target_hits = (target_view,)
            facts.spec_hits = (dataclasses.replace(target_view, block_ids=tuple(spec_ids),
                                                   num_hit_tokens=spec_num),)
        elif step.op == "allocate_slots":
            self._commit_allocation(step, effect, target_result, before)
            if target_result is not None and before is not None:
                facts.allocated = {
                    b: before.pool.ref_cnt[b] for b in target_result
                    if 0 <= b < self.config.num_blocks
                }
        elif step.op in ("free", "preempt"):
            self.running.discard(step.args["request_id"])
        return facts

    def _commit_allocation(
        self, step: Step, effect: _Effect, target_result: Any, before: Observation | None
    ) -> None:
        args = step.args
        rid = args["request_id"]
        req = self.requests[rid]
        if (effect.result is None) != (target_result is None):
            self.target_obs = self._observe_safely()
            raise self.fail(
                "allocate-result",
                f"{step.describe()}: spec returns {effect.result}, target {target_result}",
            )
        if target_result is None:
            self._expect_unchanged(step, before, "cannot-schedule-changes-nothing")
            return
        num_computed_new = args.get("num_new_computed_tokens", 0)
        if rid not in self.running and req.num_computed_tokens == 0 and \
                self.config.enable_caching:
            self.admissions.append(mi.Admission(
                rid, req.num_tokens, num_computed_new, preempted=req.num_preemptions > 0
            ))
        self.running.add(rid)
        written = req.num_computed_tokens + num_computed_new + args["num_new_tokens"]
        mi.note_allocation(
            self.contents, req, self.target.get_block_ids(rid), list(target_result),
            len(args.get("new_computed_blocks", ())), min(written, req.num_tokens),
        )

    def _expect_unchanged(self, step: Step, before: Observation | None, name: str,
                          refused: bool = False) -> None:
        if before is None:
            return
        after = self.observe_target()
        self.target_obs = after
        changed = _differences(before, after)
        if changed:
            if refused:
                self._out_of_scope_unless_judged(step, "refused it with side effects")
            raise self.fail(
                name,
                f"{step.describe()} changed {', '.join(changed)} "
                f"({_describe_difference(changed[0], before, after)})",
            )

    def _expect_refusal(self, step: Step, refusal: Refused) -> None:
        if refusal.reason in UNTRUSTED_INPUT:
            raise OutsideScope(
                len(self.steps),
                f"{step.describe()} passes hits get_computed_blocks does not return "
                f"({refusal.message}); the protocol never sends those",
            )
        # The last observation is the state before this step (nothing ran since).
        before = self.target_obs or self.observe_target()
        try:
            _call_target(self.target, step)
        except Exception:  # noqa: BLE001 - the expected outcome
            self._expect_unchanged(step, before, "refusal-changes-nothing", refused=True)
            return
        self.target_obs = self._observe_safely()
        self._out_of_scope_unless_judged(step, "accepted it")
        raise self.fail(
            "refuses-bad-input",
            f"{step.describe()} must be refused ({refusal.reason}: {refusal.message}), "
            "but the target accepted it",
        )

    def _out_of_scope_unless_judged(self, step: Step, what_target_did: str) -> None:
        if not self.judge_bad_input:
            raise OutsideScope(
                len(self.steps),
                f"{step.describe()} is refused by the spec and the target {what_target_did}; "
                "this run does not check bad input",
            )

    def _compare_result(self, step: Step, spec_result: Any, target_result: Any) -> None:
        if step.op == "get_computed_blocks":
            got = _pair(target_result)
            want = (list(spec_result[0]), spec_result[1])
            if got != want:
                raise self.fail(
                    "computed-blocks",
                    f"{step.describe()}: spec finds {want[0]} ({want[1]} tokens), "
                    f"target {got[0]} ({got[1]} tokens)",
                )
        elif step.op == "allocate_slots" and spec_result is not None:
            if list(target_result) != list(spec_result):
                raise self.fail(
                    "allocate-result",
                    f"{step.describe()}: spec hands out {spec_result}, "
                    f"target {list(target_result)}",
                )
        elif step.op == "reset_prefix_cache" and bool(target_result) != bool(spec_result):
            raise self.fail(
                "reset-result",
                f"reset_prefix_cache: spec returns {spec_result}, target {target_result}",
            )

    # ------------------------------------------------------------------ the spec's side

    def _spec_add_request(
        self, m: sm.ManagerState, request_id: str, prompt_token_ids: Sequence[int],
        lora_name: str | None = None, cache_salt: str | None = None,
    ) -> _Effect:
        if request_id in self.requests:
            raise Refused(DUPLICATE_REQUEST, f"add_request: {request_id!r} already exists")
        req = Request(
            request_id, tuple(prompt_token_ids), self.config.block_size, profile=self.profile,
            lora=None if lora_name is None else LoRARequest(lora_name),
            cache_salt=cache_salt,
        )
        return _Effect(then=lambda: self.requests.__setitem__(request_id, req))

    def _spec_append_output_tokens(
        self, m: sm.ManagerState, request_id: str, token_ids: Sequence[int]
    ) -> _Effect:
        req = self.request(request_id, "append_output_tokens")
        return _Effect(then=lambda: req.append_output_token_ids(list(token_ids)))

    def _spec_set_num_computed_tokens(
        self, m: sm.ManagerState, request_id: str, num_computed_tokens: int
    ) -> _Effect:
        req = self.request(request_id, "set_num_computed_tokens")
        if not 0 <= num_computed_tokens <= req.num_tokens:
            raise Refused(
                COMPUTED_OUT_OF_RANGE,
                f"set_num_computed_tokens({request_id!r}): {num_computed_tokens}, expected "
                f"0..{req.num_tokens}",
            )
        return _Effect(then=lambda: setattr(req, "num_computed_tokens", num_computed_tokens))

    def _spec_get_computed_blocks(self, m: sm.ManagerState, request_id: str) -> _Effect:
        req = self.request(request_id, "get_computed_blocks")
        return _Effect(result=sm.get_computed_blocks(m, req))

    def _spec_allocate_slots(
        self, m: sm.ManagerState, request_id: str, num_new_tokens: int,
        num_new_computed_tokens: int = 0, new_computed_blocks: Sequence[int] = (),
        num_lookahead_tokens: int = 0,
    ) -> _Effect:
        req = self.request(request_id, "allocate_slots")
        return _Effect(result=sm.allocate_slots(
            m, req, num_new_tokens, num_new_computed_tokens, list(new_computed_blocks),
            num_lookahead_tokens,
        ))

    def _spec_free(self, m: sm.ManagerState, request_id: str) -> _Effect:
        self.request(request_id, "free")
        sm.free(m, request_id)
        return _Effect()

    def _spec_preempt(self, m: sm.ManagerState, request_id: str) -> _Effect:
        req = self.request(request_id, "preempt")
        sm.free(m, request_id)

        def reset() -> None:
            req.num_computed_tokens = 0
            req.num_preemptions += 1

        return _Effect(then=reset)

    def _spec_reset_prefix_cache(self, m: sm.ManagerState) -> _Effect:
        return _Effect(result=sm.reset_prefix_cache(m))

    # ------------------------------------------------------------------ checking

    def _snapshot(self, obs: Observation, hits: tuple[mi.HitView, ...],
                  stats: sm.PrefixCacheStats | None) -> mi.ManagerSnapshot:
        """One side's manager snapshot, with the driver's facts (a copy of its records, so
        that a snapshot kept to compare with a later one is not changed by later steps)."""
        tables = obs.tables
        running = self.running
        return mi.ManagerSnapshot(
            block_size=self.config.block_size,
            num_blocks=self.config.num_blocks,
            ref_cnt=obs.pool.ref_cnt,
            requests=tuple(
                mi.request_view(req, tables[rid]) for rid, req in self.requests.items()
                if rid in running or tables[rid]
            ),
            hits=hits,
            block_content=dict(self.contents),
            stats=stats,
            admissions=tuple(self.admissions),
        )

    def check(
        self,
        facts: _StepFacts | None = None,
        target: Observation | None = None,
        spec_obs: Observation | None = None,
    ) -> None:
        """Every pool and manager invariant, on the spec's own state, then on the target's
        observations."""
        facts = facts or _StepFacts()
        target = target or self.observe_target()
        spec_obs = spec_obs or self.observe_spec(facts.spec_allocated)
        self.target_obs = target
        self._check_spec(spec_obs, facts)
        # Observations (hash bytes included) and lookup answers equal to the spec's, whose
        # state holds every invariant (just checked), hold them too: then the target's
        # invariants are not run again, only counted; they run to name what differs.
        same = (self.config.compare_hashes and facts.target_hits == facts.spec_hits
                and not _differences(spec_obs, target))
        on_check = self.on_check
        if same:
            if on_check:
                for name in INVARIANTS:
                    on_check(name)
                for name in mi.MANAGER_INVARIANTS:
                    if name not in self.waived:
                        on_check(name)
            return
        target_pools = _with_allocated(target.pool, facts.allocated, target.tables,
                                       target.hashes)
        for name, inv in INVARIANTS.items():
            if on_check:
                on_check(name)
            broken = inv.check(target_pools[name == ALLOCATION_INVARIANT])
            if broken:
                if name == ALLOCATION_INVARIANT:
                    broken += _why_new_blocks_hold_hashes(target, facts.allocated,
                                                          self.config.block_size)
                raise self.fail(name, "target: " + "; ".join(broken))
        stats = None if target.stats is None else sm.PrefixCacheStats(*target.stats)
        target_snap = self._snapshot(target, facts.target_hits, stats)
        for name, minv in mi.MANAGER_INVARIANTS.items():
            if name in self.waived:
                continue
            if on_check:
                on_check(name)
            broken = minv.check(target_snap)
            if broken:
                raise self.fail(name, "target: " + "; ".join(broken))

    def _check_spec(self, spec_obs: Observation, facts: _StepFacts) -> None:
        """Every invariant on the spec's own state: a broken one is a spec error, or waived
        when it assumes a discipline the sequence left.

        Invariants are functions of a snapshot alone, so a snapshot equal to the last one
        that held them holds them too: the pool's are not run again after a step that left
        the spec's pool as it was (and handed out nothing), the manager's not after one
        that left everything their snapshot is built from as it was (compared as plain
        tuples and the driver's own records, without building the snapshot).
        """
        stats = sm.prefix_cache_stats(self.spec)
        manager_names = [n for n in mi.MANAGER_INVARIANTS if n not in self.waived]
        spec_broken: dict[str, list[str]] = {}
        pool_key = None if facts.spec_allocated else spec_obs.pool
        if pool_key is None or pool_key != self._spec_pool_held:
            plain, masked = _with_allocated(spec_obs.pool, facts.spec_allocated, spec_obs.tables,
                                            spec_obs.hashes)
            spec_broken.update(check_pool(plain, POOL_NAMES_BUT_ALLOCATION))
            spec_broken.update(check_pool(masked, [ALLOCATION_INVARIANT]))
        # Everything the manager snapshot is built from, in plain tuples (cheaper to build
        # and compare than the snapshot); the driver's records are compared as they are.
        tables, running = spec_obs.tables, self.running
        manager_key = (
            spec_obs.pool.ref_cnt,
            tuple((rid, req.num_tokens, req.num_computed_tokens, tables[rid])
                  for rid, req in self.requests.items() if rid in running or tables[rid]),
            facts.spec_hits, stats.as_tuple(), tuple(manager_names),
        )
        held = self._spec_manager_held
        if (held is None or held[0] != manager_key or held[1] != self.contents
                or held[2] != self.admissions):
            spec_snap = self._snapshot(spec_obs, facts.spec_hits, stats)
            spec_broken.update(mi.check_all(spec_snap, manager_names))
            held = None if spec_broken else (
                manager_key, spec_snap.block_content, list(self.admissions))
        for name, msgs in spec_broken.items():
            assumes = mi.MANAGER_INVARIANTS[name].assumes.get(self.profile.name) if (
                name in mi.MANAGER_INVARIANTS) else None
            if assumes is None:
                raise self.fail(f"spec:{name}", "the spec itself breaks it: " + "; ".join(msgs),
                                spec_error=True)
            self.waived[name] = (f"since step {len(self.steps)}, which leaves the usage "
                                 f"discipline it assumes ({assumes}): {'; '.join(msgs)}")
        self._spec_pool_held = pool_key
        self._spec_manager_held = held

    def compare_observations(
        self, target: Observation | None = None, spec: Observation | None = None
    ) -> None:
        """Every observation of the target against the spec's."""
        target = target or self.observe_target()
        spec = spec or self.observe_spec()
        for what in _differences(spec, target, compare_hashes=self.config.compare_hashes):
            raise self.fail(what, _describe_difference(what, spec, target))


@dataclass
class _Effect:
    """A spec step that passed its guards: its result, and the request updates to make
    once the target has accepted the step too (the manager state is already a trial)."""

    result: Any = None
    then: Callable[[], None] | None = None

    def apply_to_requests(self) -> None:
        if self.then is not None:
            self.then()


def _copy_request(request: Request) -> Request:
    """An independent copy of a spec request (its hashes are copied, not recomputed).
    Field by field, not ``copy.copy``: the exhaustive engine copies every request of every
    world it explores."""
    twin = object.__new__(type(request))
    twin.__dict__.update(request.__dict__)
    twin.output_token_ids = list(request.output_token_ids)
    twin.block_hashes = list(request.block_hashes)
    return twin


def _parents(hashes: dict[str, tuple[bytes, ...]]) -> dict[bytes, bytes | None]:
    """The hash chain structure of a target's own keys: each block hash -> its parent's."""
    parent_of: dict[bytes, bytes | None] = {}
    for chain in hashes.values():
        for i, h in enumerate(chain):
            parent_of.setdefault(h, chain[i - 1] if i else None)
    return parent_of


def _with_allocated(
    pool: PoolSnapshot,
    allocated: dict[int, int],
    tables: dict[str, tuple[int, ...]],
    hashes: dict[str, tuple[bytes, ...]],
) -> tuple[PoolSnapshot, PoolSnapshot]:
    """``pool`` with the blocks this step handed out: as is, and as ``no-double-allocation``
    must see it.

    At the pool level a block handed out must hold no hash. ``allocate_slots`` also
    caches the blocks it fills in the same step, so here a new block may hold a hash,
    but only its request's own hash for that table position: the second snapshot hides
    that one from the invariant, and leaves any other hash (a stale one) for it to report.
    """
    if pool.allocated != allocated:
        pool = dataclasses.replace(pool, allocated=allocated)
    if not allocated:
        return pool, pool
    own: set[int] = set()
    for rid, table in tables.items():
        for i, b in enumerate(table):
            if b in allocated and i < len(hashes[rid]) and pool.block_hash[b] == hashes[rid][i]:
                own.add(b)
    block_hash = tuple(None if b in own else h for b, h in enumerate(pool.block_hash))
    return pool, dataclasses.replace(pool, block_hash=block_hash)


def _why_new_blocks_hold_hashes(
    target: Observation, allocated: dict[int, int], block_size: int
) -> list[str]:
    """For each block this step handed out that now holds a hash other than its request's
    hash at its table position, where that position stands: past the request's full
    blocks means a partial block was cached."""
    notes: list[str] = []
    for rid, table in target.tables.items():
        hashes = target.hashes.get(rid, ())
        for i, b in enumerate(table):
            if b not in allocated or target.pool.block_hash[b] is None:
                continue
            if i >= len(hashes):
                notes.append(
                    f"block {b} is block {i} of request {rid!r} (tokens {i * block_size}.."
                    f"{(i + 1) * block_size - 1}), which has {len(hashes)} full blocks: a "
                    "block that is not full was cached")
            elif target.pool.block_hash[b] != hashes[i]:
                notes.append(f"block {b} holds a hash other than request {rid!r}'s hash for "
                             f"its block {i}")
    return notes


def _pair(result: Any) -> tuple[list[int], int]:
    ids, num = result
    return list(ids), int(num)


def _call_target(target: ManagerTarget, step: Step) -> Any:
    a = step.args
    op = step.op
    if op == "add_request":
        return target.add_request(
            a["request_id"], list(a["prompt_token_ids"]),
            lora_name=a.get("lora_name"), cache_salt=a.get("cache_salt"),
        )
    if op == "append_output_tokens":
        return target.append_output_tokens(a["request_id"], list(a["token_ids"]))
    if op == "set_num_computed_tokens":
        return target.set_num_computed_tokens(a["request_id"], a["num_computed_tokens"])
    if op == "get_computed_blocks":
        return target.get_computed_blocks(a["request_id"])
    if op == "allocate_slots":
        return target.allocate_slots(
            a["request_id"], a["num_new_tokens"], a.get("num_new_computed_tokens", 0),
            list(a.get("new_computed_blocks", ())), a.get("num_lookahead_tokens", 0),
        )
    if op == "free":
        return target.free(a["request_id"])
    if op == "preempt":
        return target.preempt(a["request_id"])
    if op == "reset_prefix_cache":
        return target.reset_prefix_cache()
    raise ValueError(f"unknown manager operation {op!r}")


def start_driver(
    factory: Callable[..., ManagerTarget],
    config: ManagerConfig,
    *,
    on_check: Callable[[str], None] | None = None,
    judge_bad_input: bool = True,
) -> ManagerDriver:
    """A driver over a fresh target, its fresh state already judged."""
    driver = ManagerDriver(factory, config, on_check=on_check, judge_bad_input=judge_bad_input)
    driver.check()
    driver.compare_observations()
    return driver


def replay_steps(
    factory: Callable[..., ManagerTarget], config: ManagerConfig, steps: Sequence[Step]
) -> ManagerDriver:
    """Run ``steps`` through a fresh driver; raises Divergence at the first disagreement."""
    driver = start_driver(factory, config)
    for step in steps:
        driver.apply(step)
    return driver
