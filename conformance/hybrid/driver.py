"""Drive the spec's hybrid manager and a target in lockstep, one step at a time.

The hybrid twin of :class:`kvspec.conformance.manager.driver.ManagerDriver`. The driver is
also the scheduler's memory: each request's tokens (a spec
:class:`~kvspec.spec.request.Request` hashed at the finest block size), the total computed
tokens each request's last ``allocate_slots`` counted (where its window stands), and the
*content record*: which group wrote which token prefix into each block
(:func:`kvspec.spec.hybrid_invariants.note_allocation`).

After each step, in this order:

1. the target refused exactly when the spec refused, and a refusal changed nothing;
2. ``allocate_slots`` succeeded on both sides or on neither;
3. the pool invariants (:mod:`kvspec.spec.invariants`, but ``eviction-order``, whose chain
   discipline a sliding window's sparse caching leaves, and ``no-double-allocation``,
   which :data:`one-group-per-block` and ``references-counted`` judge across groups here)
   and the hybrid invariants (:mod:`kvspec.spec.hybrid_invariants`) hold on the spec's own
   state (else ``spec:NAME``), then on the target's observations;
4. return values agree (hit blocks per group and length, new blocks per group);
5. every observation agrees: ref counts, keys, free queue, free count, usage, each
   request's tables per group and fine hashes.

Only ``strict`` mode exists: the target must make exactly the spec's choices. A step the
protocol never sends (hits adopted without the lookup right before, or not from it; a
lookup of a request that holds blocks; computed tokens beyond the allocated slots; an
allocation for a request freed with computed tokens, which has finished) is
:class:`~kvspec.conformance.outcome.OutsideScope`.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from kvspec.conformance.hybrid.protocol import GroupTuple, HybridTarget
from kvspec.conformance.level import copy_target
from kvspec.conformance.outcome import Divergence, Outcome, OutsideScope
from kvspec.conformance.trace import Step
from kvspec.spec import hybrid as sh
from kvspec.spec import hybrid_invariants as hi
from kvspec.spec.errors import Refused
from kvspec.spec.invariants import INVARIANTS, PoolSnapshot
from kvspec.spec.invariants import snapshot as pool_snapshot
from kvspec.spec.profiles import get_profile
from kvspec.spec.request import Request

MODES = ("strict",)
USAGE_TOLERANCE = 1e-9
UNKNOWN_REQUEST = "unknown-request"
DUPLICATE_REQUEST = "duplicate-request"
COMPUTED_OUT_OF_RANGE = "computed-out-of-range"
CHANGES_MANAGER = frozenset({"allocate_slots", "free", "preempt", "reset_prefix_cache"})
#: Pool invariants this level checks (see the module docstring for the two it leaves).
POOL_INVARIANTS = tuple(n for n in INVARIANTS if n not in ("eviction-order",
                                                             "no-double-allocation"))
UNTRUSTED = frozenset({sh.STALE_HIT, sh.HIT_BEYOND_CAP})


@dataclass(frozen=True)
class HybridConfig:
    num_blocks: int
    groups: tuple[GroupTuple, ...]
    enable_caching: bool = True
    profile: str = "current"
    mode: str = "strict"
    compare_hashes: bool = True

    def group_specs(self) -> tuple[sh.GroupSpec, ...]:
        return tuple(sh.GroupSpec(k, bs, w) for k, bs, w in self.groups)

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["groups"] = [list(g) for g in self.groups]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> HybridConfig:
        return cls(
            num_blocks=int(data["num_blocks"]),
            groups=tuple((str(k), int(bs), None if w is None else int(w))
                         for k, bs, w in data["groups"]),
            enable_caching=bool(data.get("enable_caching", True)),
            profile=str(data.get("profile", "current")),
            mode=str(data.get("mode", "strict")),
            compare_hashes=bool(data.get("compare_hashes", True)),
        )


@dataclass
class Observation:
    """Everything the hybrid protocol lets us see."""

    pool: PoolSnapshot
    tables: dict[str, tuple[tuple[int, ...], ...]]
    hashes: dict[str, tuple[bytes, ...]]

    def view(self) -> dict[str, Any]:
        return {
            "ref_cnt": list(self.pool.ref_cnt),
            "block_hash": [None if h is None else h.hex()[:8] + "/" + h.hex()[-2:]
                           for h in self.pool.block_hash],
            "free_queue": list(self.pool.free_queue),
            "num_free_blocks": self.pool.num_free_blocks,
            "usage": round(self.pool.usage, 6),
            "tables": {r: [list(t) for t in ts] for r, ts in self.tables.items() if any(ts)},
        }


def _differences(a: Observation, b: Observation, compare_hashes: bool) -> list[str]:
    out = []
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
    return out


def _describe(what: str, spec: Observation, target: Observation) -> str:
    if what == "block_ids":
        for rid in spec.tables:
            if spec.tables[rid] != target.tables.get(rid):
                want = [list(t) for t in spec.tables[rid]]
                got = [list(t) for t in target.tables.get(rid, ())]
                return f"block tables of {rid!r} differ: spec {want}, target {got}"
    if what == "request_block_hashes":
        return "request_block_hashes differ"
    if what == "block_hash":
        return (f"block_hash differs: spec {spec.view()['block_hash']}, "
                f"target {target.view()['block_hash']}")
    return (f"{what} differs: spec {getattr(spec.pool, what)!r}, "
            f"target {getattr(target.pool, what)!r}")


class HybridDriver:
    """Runs hybrid steps on the spec and a target together and judges every one."""

    def __init__(self, factory: Callable[..., HybridTarget], config: HybridConfig, *,
                 on_check: Callable[[str], None] | None = None,
                 judge_bad_input: bool = True) -> None:
        if config.mode not in MODES:
            raise ValueError(f"the hybrid level runs in strict mode only, not {config.mode!r}")
        self.config = config
        self.groups = config.group_specs()
        self.spec = sh.init_hybrid(config.num_blocks, self.groups,
                                   enable_caching=config.enable_caching,
                                   profile=get_profile(config.profile))
        self.factory = factory
        self.target = self._new_target()
        self.on_check = on_check
        self.judge_bad_input = judge_bad_input
        self.steps: list[Step] = []
        self.requests: dict[str, Request] = {}
        self.window_at: dict[str, int] = {}
        self.content: dict[int, hi.Content] = {}
        """What the scheduler wrote into the target's blocks."""
        self.spec_content: dict[int, hi.Content] = {}
        """The same for the spec's blocks (the spec's invariants read this one)."""
        self.looked_up: str | None = None
        self.target_obs: Observation | None = None
        self._state_key: Hashable | None = None

    def _new_target(self) -> HybridTarget:
        c = self.config
        return self.factory(c.num_blocks, c.groups, enable_caching=c.enable_caching,
                            profile=c.profile)

    def _rebuilt_target(self) -> HybridTarget:
        target = self._new_target()
        for step in self.steps:
            with contextlib.suppress(Exception):
                _call_target(target, step)
        return target

    def clone(self) -> HybridDriver:
        twin = copy.copy(self)
        twin.spec = self.spec.clone()
        twin.target = copy_target(self.target, self._rebuilt_target)
        twin.steps = list(self.steps)
        twin.requests = {r: _copy_request(q) for r, q in self.requests.items()}
        twin.window_at = dict(self.window_at)
        twin.content = dict(self.content)
        twin.spec_content = dict(self.spec_content)
        return twin

    def state_key(self) -> Hashable:
        if self._state_key is None:
            obs = self.target_obs
            assert obs is not None, "state_key before the first check"
            reqs = tuple((r, q.all_token_ids, q.num_computed_tokens)
                         for r, q in sorted(self.requests.items()))
            self._state_key = (self.spec.key(), reqs, tuple(sorted(self.content.items())),
                               tuple(sorted(self.window_at.items())), self.looked_up,
                               obs.pool.ref_cnt, obs.pool.free_queue,
                               tuple(sorted(obs.tables.items())))
        return self._state_key

    def fail(self, caught_by: str, message: str, *, spec_error: bool = False) -> Divergence:
        return Divergence(
            caught_by=caught_by, message=message, level="hybrid", config=self.config,
            steps=list(self.steps), spec_view=self.observe_spec().view(),
            target_view=self.target_obs.view() if self.target_obs else {},
            spec_error=spec_error,
        )

    def request(self, request_id: str, op: str) -> Request:
        try:
            return self.requests[request_id]
        except KeyError:
            raise Refused(UNKNOWN_REQUEST, f"{op}: request {request_id!r} was never added"
                          ) from None

    # ------------------------------------------------------------------ observing

    def observe_target(self) -> Observation:
        t, n = self.target, self.config.num_blocks
        pool = PoolSnapshot(
            num_blocks=n, enable_caching=self.config.enable_caching,
            count_null_refs=self.spec.pool.profile.count_null_refs,
            ref_cnt=tuple(t.ref_cnt(b) for b in range(n)),
            block_hash=tuple(None if (h := t.block_hash(b)) is None else bytes(h)
                             for b in range(n)),
            free_queue=tuple(t.free_block_ids()), num_free_blocks=t.get_num_free_blocks(),
            usage=t.get_usage(), index={}, index_complete=False,
        )
        return Observation(
            pool=pool,
            tables={r: tuple(tuple(g) for g in t.get_block_ids(r)) for r in self.requests},
            hashes={r: tuple(bytes(h) for h in t.request_block_hashes(r))
                    for r in self.requests},
        )

    def observe_spec(self) -> Observation:
        return Observation(
            pool=pool_snapshot(self.spec.pool),
            tables={r: tuple(tuple(g) for g in sh.get_block_ids(self.spec, r))
                    for r in self.requests},
            hashes={r: tuple(q.block_hashes) for r, q in self.requests.items()},
        )

    # ------------------------------------------------------------------ one step

    def apply(self, step: Step) -> Outcome:
        """Take ``step`` on both sides, then check everything. Raises Divergence."""
        self._state_key = None
        looked_up, self.looked_up = self.looked_up, None
        handler = getattr(self, f"_spec_{step.op}", None)
        if handler is None:
            raise ValueError(f"unknown hybrid operation {step.op!r}")
        trial = self.spec.clone() if step.op in CHANGES_MANAGER else self.spec
        try:
            result, then = handler(trial, **step.args)
        except Refused as refusal:
            self.steps.append(step)
            self._check_scope(step, looked_up)
            self._expect_refusal(step, refusal)
            return Outcome(refused=refusal)
        self.steps.append(step)
        self._check_scope(step, looked_up)
        if step.op == "get_computed_blocks":
            self.looked_up = step.args["request_id"]
        before = spec_before = None
        if step.op == "allocate_slots":
            before = self.target.get_block_ids(step.args["request_id"])
            spec_before = sh.get_block_ids(self.spec, step.args["request_id"])
        try:
            target_result = _call_target(self.target, step)
        except Exception as exc:  # noqa: BLE001 - any exception is a refusal
            self.spec = trial
            self.target_obs = self._observe_safely()
            raise self.fail("refused-legal-operation",
                            f"{step.describe()} is legal, but the target raised "
                            f"{type(exc).__name__}: {exc}") from None
        self.spec = trial
        if then is not None:
            then()
        hits: tuple[hi.HitView, ...] = ()
        if step.op == "get_computed_blocks":
            req = self.requests[step.args["request_id"]]
            blocks, num = _hit_pair(target_result)
            hits = (hi.HitView(req.request_id, req.all_token_ids, blocks, num),)
        elif step.op == "allocate_slots":
            self._commit_allocation(step, result, target_result, before, spec_before)
        target, spec = self.observe_target(), self.observe_spec()
        self.check(target, spec, hits)
        self._compare_result(step, result, target_result)
        self.compare_observations(target, spec)
        return Outcome(result=result)

    def _check_scope(self, step: Step, looked_up: str | None) -> None:
        rid = step.args.get("request_id")
        n = len(self.steps)
        if step.op == "allocate_slots" and step.args.get("new_computed_blocks") and \
                looked_up != rid:
            raise OutsideScope(n, f"{step.describe()} adopts hits without looking "
                               f"{rid!r} up right before")
        if step.op == "allocate_slots" and rid in self.requests and \
                rid not in self.spec.running and self.requests[rid].num_computed_tokens:
            raise OutsideScope(n, f"{step.describe()}: {rid!r} was freed with computed "
                               "tokens, so it finished; a scheduler never schedules a "
                               "finished request again (a preempted one restarts from 0)")
        if step.op == "get_computed_blocks" and rid in self.requests and any(
                sh.get_block_ids(self.spec, rid)):
            raise OutsideScope(n, f"{step.describe()}: {rid!r} holds blocks; a scheduler "
                               "looks up only requests it is about to admit")
        if step.op == "set_num_computed_tokens" and rid in self.requests:
            slots = min(len(t) * g.block_size for t, g in
                        zip(sh.get_block_ids(self.spec, rid), self.groups, strict=True))
            if step.args["num_computed_tokens"] > slots:
                raise OutsideScope(n, f"{step.describe()}: {rid!r} has slots for {slots} "
                                   "tokens; a scheduler advances only over allocated slots")

    def judge_refusal_in_place(self, step: Step) -> bool:
        return False

    def _observe_safely(self) -> Observation | None:
        try:
            return self.observe_target()
        except Exception:  # noqa: BLE001 - a broken target is itself the finding
            return None

    def _commit_allocation(self, step: Step, result: Any, target_result: Any,
                           before: Sequence[Sequence[int]] | None,
                           spec_before: Sequence[Sequence[int]] | None) -> None:
        a = step.args
        rid = a["request_id"]
        req = self.requests[rid]
        if (result is None) != (target_result is None):
            self.target_obs = self._observe_safely()
            raise self.fail("allocate-result",
                            f"{step.describe()}: spec returns {result}, target {target_result}")
        computed = (req.num_computed_tokens + a.get("num_new_computed_tokens", 0)
                    + a.get("num_external_computed_tokens", 0))
        self.window_at[rid] = computed
        if target_result is None:
            return
        hits = a.get("new_computed_blocks") or [[] for _ in self.groups]
        written = min(computed + a["num_new_tokens"], req.num_tokens)
        for record, tables, old_tables in (
                (self.content, self.target.get_block_ids(rid), before),
                (self.spec_content, sh.get_block_ids(self.spec, rid), spec_before)):
            fresh = _fresh_blocks(tables, old_tables or [[] for _ in self.groups], hits)
            hi.note_allocation(record, self.groups, req.all_token_ids, tables, written, fresh)

    def _expect_refusal(self, step: Step, refusal: Refused) -> None:
        if refusal.reason in UNTRUSTED:
            raise OutsideScope(len(self.steps), f"{step.describe()} passes hits the lookup "
                               f"did not return ({refusal.message})")
        before = self.target_obs or self.observe_target()
        try:
            _call_target(self.target, step)
        except Exception:  # noqa: BLE001 - the expected outcome
            after = self.observe_target()
            self.target_obs = after
            changed = _differences(before, after, True)
            if changed:
                raise self.fail("refusal-changes-nothing",
                                f"{step.describe()} was refused but changed "
                                f"{', '.join(changed)}") from None
            return
        self.target_obs = self._observe_safely()
        if not self.judge_bad_input:
            raise OutsideScope(len(self.steps), f"{step.describe()} is refused by the spec "
                               "and accepted by the target; this run does not check bad input")
        raise self.fail("refuses-bad-input",
                        f"{step.describe()} must be refused ({refusal.reason}: "
                        f"{refusal.message}), but the target accepted it")

    def _compare_result(self, step: Step, spec_result: Any, target_result: Any) -> None:
        if step.op == "get_computed_blocks":
            got, want = _hit_pair(target_result), _hit_pair(spec_result)
            if got != want:
                raise self.fail("computed-blocks", f"{step.describe()}: spec finds "
                                f"{[list(g) for g in want[0]]} ({want[1]} tokens), target "
                                f"{[list(g) for g in got[0]]} ({got[1]} tokens)")
        elif step.op == "allocate_slots" and spec_result is not None:
            got = [list(g) for g in target_result]
            if got != [list(g) for g in spec_result]:
                raise self.fail("allocate-result", f"{step.describe()}: spec hands out "
                                f"{spec_result}, target {got}")
        elif step.op == "reset_prefix_cache" and bool(target_result) != bool(spec_result):
            raise self.fail("reset-result", f"reset_prefix_cache: spec returns {spec_result}, "
                            f"target {target_result}")

    # ------------------------------------------------------------------ the spec's side

    def _spec_add_request(self, m: sh.HybridState, request_id: str,
                          prompt_token_ids: Sequence[int]) -> tuple[Any, Any]:
        if request_id in self.requests:
            raise Refused(DUPLICATE_REQUEST, f"add_request: {request_id!r} already exists")
        req = sh.new_request(m, request_id, prompt_token_ids)
        return None, lambda: self.requests.__setitem__(request_id, req)

    def _spec_append_output_tokens(self, m: sh.HybridState, request_id: str,
                                   token_ids: Sequence[int]) -> tuple[Any, Any]:
        req = self.request(request_id, "append_output_tokens")
        return None, lambda: req.append_output_token_ids(list(token_ids))

    def _spec_set_num_computed_tokens(self, m: sh.HybridState, request_id: str,
                                      num_computed_tokens: int) -> tuple[Any, Any]:
        req = self.request(request_id, "set_num_computed_tokens")
        if not 0 <= num_computed_tokens <= req.num_tokens:
            raise Refused(COMPUTED_OUT_OF_RANGE, f"set_num_computed_tokens({request_id!r}): "
                          f"{num_computed_tokens}, expected 0..{req.num_tokens}")
        return None, lambda: setattr(req, "num_computed_tokens", num_computed_tokens)

    def _spec_get_computed_blocks(self, m: sh.HybridState, request_id: str) -> tuple[Any, Any]:
        return sh.get_computed_blocks(m, self.request(request_id, "get_computed_blocks")), None

    def _spec_allocate_slots(
        self, m: sh.HybridState, request_id: str, num_new_tokens: int,
        num_new_computed_tokens: int = 0, new_computed_blocks: Sequence[Sequence[int]] = (),
        num_lookahead_tokens: int = 0, num_external_computed_tokens: int = 0,
    ) -> tuple[Any, Any]:
        req = self.request(request_id, "allocate_slots")
        return sh.allocate_slots(m, req, num_new_tokens, num_new_computed_tokens,
                                 [list(g) for g in new_computed_blocks] or None,
                                 num_lookahead_tokens, num_external_computed_tokens), None

    def _spec_free(self, m: sh.HybridState, request_id: str) -> tuple[Any, Any]:
        self.request(request_id, "free")
        sh.free(m, request_id)
        return None, None

    def _spec_preempt(self, m: sh.HybridState, request_id: str) -> tuple[Any, Any]:
        req = self.request(request_id, "preempt")
        sh.free(m, request_id)

        def reset() -> None:
            req.num_computed_tokens = 0
            req.num_preemptions += 1

        return None, reset

    def _spec_reset_prefix_cache(self, m: sh.HybridState) -> tuple[Any, Any]:
        return sh.reset_prefix_cache(m), None

    # ------------------------------------------------------------------ checking

    def _snapshot(self, obs: Observation, hits: tuple[hi.HitView, ...],
                  content: dict[int, hi.Content]) -> hi.HybridSnapshot:
        views = tuple(
            hi.RequestView(r, q.all_token_ids, obs.tables[r], self.window_at.get(r, 0))
            for r, q in self.requests.items() if any(obs.tables[r]))
        return hi.HybridSnapshot(self.groups, self.config.num_blocks, obs.pool.ref_cnt,
                                 views, hits, content)

    def check(self, target: Observation | None = None, spec_obs: Observation | None = None,
              target_hits: tuple[hi.HitView, ...] = ()) -> None:
        """Every pool and hybrid invariant, on the spec's own state, then on the target's."""
        target = target or self.observe_target()
        spec_obs = spec_obs or self.observe_spec()
        self.target_obs = target
        spec_hits: tuple[hi.HitView, ...] = ()
        if target_hits:
            h = target_hits[0]
            blocks, num = sh.get_computed_blocks(self.spec, self.requests[h.request_id])
            spec_hits = (hi.HitView(h.request_id, h.tokens,
                                    tuple(tuple(g) for g in blocks), num),)
        for name in POOL_INVARIANTS:
            broken = INVARIANTS[name].check(spec_obs.pool)
            if broken:
                raise self.fail(f"spec:{name}", "; ".join(broken), spec_error=True)
        for name, broken in hi.check_all(
                self._snapshot(spec_obs, spec_hits, self.spec_content)).items():
            raise self.fail(f"spec:{name}", "; ".join(broken), spec_error=True)
        target_snap = self._snapshot(target, target_hits, self.content)
        for name in hi.HYBRID_INVARIANTS:
            if self.on_check:
                self.on_check(name)
            broken = hi.HYBRID_INVARIANTS[name].check(target_snap)
            if broken:
                raise self.fail(name, "target: " + "; ".join(broken))
        for name in POOL_INVARIANTS:
            if self.on_check:
                self.on_check(name)
            broken = INVARIANTS[name].check(target.pool)
            if broken:
                raise self.fail(name, "target: " + "; ".join(broken))

    def compare_observations(self, target: Observation | None = None,
                             spec: Observation | None = None) -> None:
        target = target or self.observe_target()
        spec = spec or self.observe_spec()
        for what in _differences(spec, target, self.config.compare_hashes):
            raise self.fail(what, _describe(what, spec, target))


def _fresh_blocks(tables: Sequence[Sequence[int]], before: Sequence[Sequence[int]],
                  hits: Sequence[Sequence[int]]) -> set[int]:
    """Blocks an allocation handed out: at a position that held another block before and
    that is not the hit's (a block the window gave back may be handed out again at once)."""
    fresh = set()
    for table, old, hit in zip(tables, before, hits, strict=True):
        for i, b in enumerate(table):
            if (i >= len(old) or old[i] != b) and not (i < len(hit) and hit[i] == b):
                fresh.add(b)
    return fresh


def _hit_pair(result: Any) -> tuple[tuple[tuple[int, ...], ...], int]:
    blocks, num = result
    return tuple(tuple(int(b) for b in g) for g in blocks), int(num)


def _copy_request(request: Request) -> Request:
    """An independent copy, field by field (``copy.copy`` costs several times more)."""
    twin = object.__new__(type(request))
    twin.__dict__.update(request.__dict__)
    twin.output_token_ids = list(request.output_token_ids)
    twin.block_hashes = list(request.block_hashes)
    return twin


def _call_target(target: HybridTarget, step: Step) -> Any:
    a, op = step.args, step.op
    if op == "add_request":
        return target.add_request(a["request_id"], list(a["prompt_token_ids"]))
    if op == "append_output_tokens":
        return target.append_output_tokens(a["request_id"], list(a["token_ids"]))
    if op == "set_num_computed_tokens":
        return target.set_num_computed_tokens(a["request_id"], a["num_computed_tokens"])
    if op == "get_computed_blocks":
        return target.get_computed_blocks(a["request_id"])
    if op == "allocate_slots":
        return target.allocate_slots(
            a["request_id"], a["num_new_tokens"], a.get("num_new_computed_tokens", 0),
            [list(g) for g in a.get("new_computed_blocks", ())],
            a.get("num_lookahead_tokens", 0), a.get("num_external_computed_tokens", 0))
    if op == "free":
        return target.free(a["request_id"])
    if op == "preempt":
        return target.preempt(a["request_id"])
    if op == "reset_prefix_cache":
        return target.reset_prefix_cache()
    raise ValueError(f"unknown hybrid operation {op!r}")


def start_driver(factory: Callable[..., HybridTarget], config: HybridConfig, *,
                 on_check: Callable[[str], None] | None = None,
                 judge_bad_input: bool = True) -> HybridDriver:
    """A driver over a fresh target, its fresh state already judged."""
    driver = HybridDriver(factory, config, on_check=on_check, judge_bad_input=judge_bad_input)
    driver.check()
    driver.compare_observations()
    return driver
