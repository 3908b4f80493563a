"""``kvspec bench queue``: the linked-list free queue against ``collections.deque`` designs.

Upstream keeps free blocks in a hand-rolled doubly linked list "to avoid allocating Python
objects". Three workloads separate the designs (one op = one block leaving and re-entering the
queue, so ops/s compare across workloads):

* ``churn``: ``popleft`` then ``append`` -- allocate a block, free it.
* ``remove``: ``remove`` a random queued block, then ``append`` it -- a prefix hit reviving an
  eviction candidate (``touch``), later freed again. A random block stands, on average, in the
  middle of the queue.
* ``batch``: ``popleft_n(32)`` then ``append_n`` of the same blocks -- a request's table
  allocated and freed together.

The predicted ratios (contender ops/s / linked ops/s) are in :data:`PREDICTED`, copied from
docs/bench.md where they were written before anything was measured.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from kvspec.benchmarks._harness import Measurement, Run, format_table, measure_interleaved
from kvspec.benchmarks.queue_variants import DequeIndexQueue, DequeScanQueue, OrderedDictQueue
from kvspec.impl.block import KVCacheBlock
from kvspec.impl.free_queue import FreeKVCacheBlockQueue

CONTENDERS: dict[str, type] = {
    "linked": FreeKVCacheBlockQueue,
    "deque+index": DequeIndexQueue,
    "ordereddict": OrderedDictQueue,
    "deque.remove": DequeScanQueue,
}
BASELINE = "linked"
DEFAULT_SIZES = (1_000, 10_000, 100_000)
BATCH = 32

# (workload, contender) -> {pool size: (low, high)} bands on contender ops/s / linked ops/s.
_ANY_SIZE = DEFAULT_SIZES
PREDICTED: dict[tuple[str, str], dict[int, tuple[float, float]]] = {
    ("churn", "deque.remove"): dict.fromkeys(_ANY_SIZE, (2.0, 4.0)),
    ("churn", "deque+index"): dict.fromkeys(_ANY_SIZE, (0.7, 1.5)),
    ("churn", "ordereddict"): dict.fromkeys(_ANY_SIZE, (0.7, 2.0)),
    ("remove", "deque.remove"): {
        1_000: (1 / 30, 1 / 3),
        10_000: (1 / 300, 1 / 30),
        100_000: (0.0, 1 / 300),
    },
    ("remove", "deque+index"): dict.fromkeys(_ANY_SIZE, (0.5, 2.0)),
    ("remove", "ordereddict"): dict.fromkeys(_ANY_SIZE, (0.5, 2.0)),
    ("batch", "deque.remove"): dict.fromkeys(_ANY_SIZE, (1.5, 4.0)),
    ("batch", "deque+index"): dict.fromkeys(_ANY_SIZE, (0.5, 1.5)),
    ("batch", "ordereddict"): dict.fromkeys(_ANY_SIZE, (0.7, 2.0)),
}


def make_blocks(n: int) -> list[KVCacheBlock]:
    return [KVCacheBlock(i) for i in range(n)]


def _churn(queue, blocks: list[KVCacheBlock], ops: int, seed: int) -> Run:
    popleft, append = queue.popleft, queue.append

    def run() -> None:
        for _ in range(ops):
            append(popleft())

    return run


def _remove(queue, blocks: list[KVCacheBlock], ops: int, seed: int) -> Run:
    rng = random.Random(seed)
    n = len(blocks)
    victims = [blocks[rng.randrange(n)] for _ in range(ops)]
    remove, append = queue.remove, queue.append

    def run() -> None:
        for block in victims:
            remove(block)
            append(block)

    return run


def _batch(queue, blocks: list[KVCacheBlock], ops: int, seed: int) -> Run:
    k = min(BATCH, len(blocks))
    rounds = max(1, ops // k)
    popleft_n, append_n = queue.popleft_n, queue.append_n

    def run() -> None:
        for _ in range(rounds):
            append_n(popleft_n(k))

    return run


WORKLOADS: dict[str, tuple[str, Callable[..., Run]]] = {
    "churn": ("popleft + append (allocate a block, free it)", _churn),
    "remove": ("remove a random queued block + append it (touch a cached block, free it)", _remove),
    "batch": (f"popleft_n({BATCH}) + append_n (a request's table allocated, then freed)", _batch),
}


def batch_ops(ops: int, size: int) -> int:
    """Blocks the batch workload really moves for a requested ``ops`` (whole batches)."""
    k = min(BATCH, size)
    return max(1, ops // k) * k


@dataclass(frozen=True)
class QueueResult:
    workload: str
    size: int
    contender: str
    measurement: Measurement


def run_group(
    workload: str,
    blocks: list[KVCacheBlock],
    contenders: Sequence[str] = tuple(CONTENDERS),
    *,
    seed: int = 0,
    **timing,
) -> dict[str, Measurement]:
    """Time every contender on one (workload, pool size); each repeat gets a fresh full queue,
    and repeats are interleaved across contenders (see ``measure_interleaved``)."""
    factory = WORKLOADS[workload][1]

    def setup_for(cls: type) -> Callable[[int], Run]:
        return lambda ops: factory(cls(blocks), blocks, ops, seed)

    measured = measure_interleaved(
        {name: setup_for(CONTENDERS[name]) for name in contenders}, **timing
    )
    if workload == "batch":  # ops/s counts blocks actually moved
        measured = {
            name: Measurement(ops=batch_ops(m.ops, len(blocks)), seconds=m.seconds)
            for name, m in measured.items()
        }
    return measured


def scripted_order(cls: type, num_blocks: int, steps: int, seed: int = 0) -> tuple[list, list]:
    """Apply one seeded mix of every queue operation; return (ids handed out, final order).

    The contenders must agree on both for the timings to compare like with like; the bench
    checks this before timing and the smoke tests assert it.
    """
    rng = random.Random(seed)
    blocks = make_blocks(num_blocks)
    queue = cls(blocks)
    held: list[KVCacheBlock] = []
    queued = set(range(num_blocks))
    out: list[int] = []
    for _ in range(steps):
        op = rng.randrange(6)
        if op == 0 and queued:
            block = queue.popleft()
            out.append(block.block_id)
            queued.discard(block.block_id)
            held.append(block)
        elif op == 1 and queued:
            taken = queue.popleft_n(rng.randint(0, min(4, len(queued))))
            out.extend(b.block_id for b in taken)
            queued.difference_update(b.block_id for b in taken)
            held.extend(taken)
        elif op == 2 and queued:
            victim = blocks[rng.choice(sorted(queued))]
            queue.remove(victim)
            out.append(victim.block_id)
            queued.discard(victim.block_id)
            held.append(victim)
        elif op in (3, 4, 5) and held:
            rng.shuffle(held)
            k = rng.randint(1, len(held))
            back, held = held[:k], held[k:]
            if op == 3:
                for block in back:
                    queue.append(block)
            elif op == 4:
                queue.append_n(back)
            else:
                queue.prepend_n(back)
            queued.update(b.block_id for b in back)
        if queue.num_free_blocks != len(queued):
            raise AssertionError(
                f"scripted_order: {cls.__name__} reports {queue.num_free_blocks} free blocks; "
                f"expected {len(queued)}"
            )
    return out, [b.block_id for b in queue.get_all_free_blocks()]


def check_contenders_agree(num_blocks: int = 64, steps: int = 400, seed: int = 0) -> None:
    """Raise if any contender's order differs from the linked list's on the same script."""
    expected = scripted_order(CONTENDERS[BASELINE], num_blocks, steps, seed)
    for name, cls in CONTENDERS.items():
        got = scripted_order(cls, num_blocks, steps, seed)
        if got != expected:
            raise AssertionError(f"bench queue: contender {name} orders blocks differently")


def run_queue_bench(
    sizes: Sequence[int] = DEFAULT_SIZES,
    *,
    workloads: Sequence[str] = tuple(WORKLOADS),
    contenders: Sequence[str] = tuple(CONTENDERS),
    progress: Callable[[str], None] | None = None,
    **timing,
) -> list[QueueResult]:
    check_contenders_agree()
    results = []
    for size in sizes:
        blocks = make_blocks(size)
        for workload in workloads:
            measured = run_group(workload, blocks, contenders, **timing)
            for contender in contenders:
                results.append(QueueResult(workload, size, contender, measured[contender]))
            if progress:
                progress(f"{workload} {size}")
    return results


def size_label(n: int) -> str:
    if n >= 1000 and n % 1000 == 0:
        return f"{n // 1000}k"
    return str(n)


def format_ratio(r: float) -> str:
    if r >= 0.1:
        return f"{r:.2f}x"
    return f"1/{1 / r:,.0f}" if r > 0 else "0"


def _band(band: tuple[float, float] | None) -> str:
    if band is None:
        return "-"
    lo, hi = band
    return f"{format_ratio(lo) if lo else '0'}..{format_ratio(hi)}"


def ratios(results: Sequence[QueueResult]) -> dict[tuple[str, int, str], float]:
    """Contender ops/s over the baseline's, per (workload, size, contender), from one run."""
    base = {
        (r.workload, r.size): r.measurement.ops_per_s for r in results if r.contender == BASELINE
    }
    return {
        (r.workload, r.size, r.contender): r.measurement.ops_per_s / base[(r.workload, r.size)]
        for r in results
        if (r.workload, r.size) in base
    }


def verdicts(results: Sequence[QueueResult]) -> dict[tuple[str, int, str], bool | None]:
    """Whether each observed ratio fell in its predicted band (None: no prediction)."""
    out: dict[tuple[str, int, str], bool | None] = {}
    for key, r in ratios(results).items():
        band = PREDICTED.get((key[0], key[2]), {}).get(key[1])
        out[key] = None if band is None else band[0] <= r <= band[1]
    return out


def format_results(results: Sequence[QueueResult]) -> str:
    rat, held = ratios(results), verdicts(results)
    sections = []
    for workload, (description, _) in WORKLOADS.items():
        rows = []
        for r in results:
            if r.workload != workload:
                continue
            key = (workload, r.size, r.contender)
            band = PREDICTED.get((workload, r.contender), {}).get(r.size)
            verdict = {True: "yes", False: "NO", None: ""}[held.get(key)]
            rows.append(
                [
                    size_label(r.size),
                    r.contender,
                    f"{r.measurement.ops_per_s:,.0f}",
                    format_ratio(rat[key]) if key in rat else "-",
                    _band(band) if r.contender != BASELINE else "",
                    verdict,
                ]
            )
        if rows:
            header = ["blocks", "queue", "ops/s", "vs linked", "predicted", "held"]
            sections.append(f"{workload}: {description}\n" + format_table(header, rows))
    return "\n\n".join(sections)


def format_summary(results: Sequence[QueueResult]) -> str:
    """Where the gap shows: each workload's worst contender ratio, predicted vs observed."""
    rat, held = ratios(results), verdicts(results)
    judged = [v for v in held.values() if v is not None]
    lines = [f"predictions held: {sum(judged)} of {len(judged)} cells"]
    worst = min(rat.items(), key=lambda kv: kv[1], default=None)
    if worst is not None:
        (workload, size, contender), r = worst
        band = PREDICTED.get((workload, contender), {}).get(size)
        lines.append(
            f"largest gap: {contender} on {workload} at {size_label(size)} blocks runs at "
            f"{format_ratio(r)} of the linked list's speed (predicted {_band(band)})"
        )
    best = max(
        ((k, v) for k, v in rat.items() if k[2] != BASELINE), key=lambda kv: kv[1], default=None
    )
    if best is not None:
        (workload, size, contender), r = best
        band = PREDICTED.get((workload, contender), {}).get(size)
        lines.append(
            f"largest win over the linked list: {contender} on {workload} at "
            f"{size_label(size)} blocks, {format_ratio(r)} (predicted {_band(band)})"
        )
    return "\n".join(lines)
