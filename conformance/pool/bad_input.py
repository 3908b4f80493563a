"""Report what a target does with bad input, without failing on it.

``kvspec check`` fails a target that accepts an operation the spec refuses. For a target
that is known not to validate its callers (upstream vLLM asserts rather than checks), the
useful question is different: *which* bad operations does it accept, and in what state
does that leave it? This module answers it. Each probe starts from the same small,
checked state (blocks held, cached, free, and free-but-cached), sends one bad operation,
and records whether the target refused it, what changed, and which invariants its
observations now break.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from kvspec.conformance.pool.driver import TARGET_STEPS, PoolConfig, PoolDriver, differences, view
from kvspec.conformance.pool.protocol import PoolTarget
from kvspec.conformance.trace import Step
from kvspec.spec.invariants import check_all

NUM_BLOCKS = 6

# Held: 4 (cached as "c"). Free: 5 (never used), 3 (unhashed), 2 and 1 (cached "a.b", "a").
SETUP: list[Step] = [
    Step("get_new_blocks", {"num_blocks": 3}),
    Step("cache_block", {"block_id": 1, "block_hash": b"a", "parent": None}),
    Step("cache_block", {"block_id": 2, "block_hash": b"a.b", "parent": b"a"}),
    Step("get_new_blocks", {"num_blocks": 1}),
    Step("cache_block", {"block_id": 4, "block_hash": b"c", "parent": None}),
    Step("free_blocks", {"block_ids": [3, 2, 1]}),
]

# name -> the bad step, sent after SETUP; names follow the pool machine's bad-input rules.
PROBES: dict[str, Step] = {
    "over_allocate": Step("get_new_blocks", {"num_blocks": 5}),
    "negative_count": Step("get_new_blocks", {"num_blocks": -1}),
    "free_unknown_id": Step("free_blocks", {"block_ids": [NUM_BLOCKS]}),
    "free_negative_id": Step("free_blocks", {"block_ids": [-1]}),
    "touch_unknown_id": Step("touch", {"block_ids": [NUM_BLOCKS]}),
    "touch_negative_id": Step("touch", {"block_ids": [-1]}),
    "cache_unknown_id": Step("cache_block", {"block_id": NUM_BLOCKS, "block_hash": b"z"}),
    "free_unreferenced": Step("free_blocks", {"block_ids": [5]}),
    "free_unreferenced_cached": Step("free_blocks", {"block_ids": [1]}),
    "double_free_in_one_call": Step("free_blocks", {"block_ids": [4, 4]}),
    "cache_null_block": Step("cache_block", {"block_id": 0, "block_hash": b"z"}),
    "cache_unheld_block": Step("cache_block", {"block_id": 5, "block_hash": b"z"}),
    "cache_hashed_block": Step("cache_block", {"block_id": 4, "block_hash": b"z"}),
    "fork_null_block": Step("fork_block", {"block_id": 0}),
    "fork_free_block": Step("fork_block", {"block_id": 5}),
    "fork_unknown_id": Step("fork_block", {"block_id": NUM_BLOCKS}),
    # with prefix caching off (the pool below holds block 1 and nothing is cached)
    "cache_with_caching_off": Step("cache_block", {"block_id": 1, "block_hash": b"z"}),
}
CACHING_OFF_PROBES = {"cache_with_caching_off"}
SETUP_CACHING_OFF: list[Step] = [Step("get_new_blocks", {"num_blocks": 1})]


@dataclass
class ProbeResult:
    name: str
    step: Step
    outcome: str  # "refused (ExcType)", "accepted", or "not supported"
    changed: dict[str, tuple[object, object]] = field(default_factory=dict)
    broken: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.outcome.startswith("refused") and not self.changed


def probe(
    factory: Callable[..., PoolTarget], name: str, *, profile: str = "current"
) -> ProbeResult:
    """Send one bad operation to a fresh target in the SETUP state and record the result."""
    step = PROBES[name]
    if step.op in getattr(factory, "unsupported", frozenset()):
        return ProbeResult(name, step, "not supported")
    caching = name not in CACHING_OFF_PROBES
    driver = PoolDriver(factory, PoolConfig(NUM_BLOCKS, enable_caching=caching, profile=profile))
    for setup_step in SETUP if caching else SETUP_CACHING_OFF:
        driver.apply(setup_step)
    before = driver.observe_target()
    try:
        TARGET_STEPS[step.op](driver.target, step.args)
    except Exception as exc:  # noqa: BLE001 - a refusal is any exception
        outcome = f"refused ({type(exc).__name__})"
    else:
        outcome = "accepted"
    try:
        after = driver.observe_target()
    except Exception as exc:  # noqa: BLE001 - a target broken beyond observing
        return ProbeResult(name, step, outcome, {"observation": ("ok", repr(exc))})
    old, new = view(before), view(after)
    changed = {
        what: (old.get(what, "-"), new.get(what, "-"))
        for what in differences(before, after, compare_queue=True)
    }
    broken = sorted(check_all(after))
    return ProbeResult(name, step, outcome, changed, broken)


def probe_all(factory: Callable[..., PoolTarget], *, profile: str = "current") -> list[ProbeResult]:
    return [probe(factory, name, profile=profile) for name in PROBES]


def format_report(results: list[ProbeResult]) -> str:
    lines = [
        f"bad input, sent to a {NUM_BLOCKS}-block pool holding block 4 (cached), with block 5 "
        "free, 3 free, and 2, 1 free but cached:",
        f"  {'probe':<26} {'operation':<44} {'outcome':<32} left behind",
    ]
    for r in results:
        left = "; ".join(f"{k} {a} -> {b}" for k, (a, b) in r.changed.items()) or "nothing changed"
        if r.broken:
            left += f"  [breaks: {', '.join(r.broken)}]"
        lines.append(f"  {r.name:<26} {r.step.describe():<44} {r.outcome:<32} {left}")
    accepted = [r.name for r in results if r.outcome == "accepted"]
    lines.append(f"accepted silently: {', '.join(accepted) if accepted else 'none'}")
    return "\n".join(lines)
