"""Block-store bandwidth: ``copy_blocks`` and ``gather`` against a plain contiguous copy.

``python -m benchmarks.block_store [--device cpu|cuda]``

Each operation is timed next to ``dst.copy_(src)`` over two contiguous buffers holding the
same number of bytes, in the same run and on the same device, and reported as a ratio of
effective bandwidths (bytes moved / median seconds per call). A plain copy is the ceiling an
indexed copy can approach: it reads and writes each byte once with no index arithmetic. The
ratio, not the absolute GB/s, is the figure to compare across machines, since the absolute
figure depends on the memory system and, on shared CPUs, on what else is running.

``copy_blocks`` of ``n`` blocks moves ``n * block_nbytes`` (K and V of every layer);
``gather`` of a request moves K and V of one layer for its tokens, through a shuffled block
table, as paged attention does once per layer. The per-call overhead of a 1-block copy is
its time minus the plain copy of the same bytes: validation, index tensors, dispatch.

Timing: a warm-up call, then calls are batched until a batch lasts ``--min-batch-ms``.
``--repeats`` rounds each time one batch of the operation and one of the plain copy back to
back; the medians give the times and the median of the per-round ratios gives the ratio, so
a burst of load from another process slows both halves of a round alike. On CUDA the device
is synchronised before and after every batch, so a batch's time covers its kernels. On CPU
the default is one torch thread (``--threads``): figures on a shared machine scatter less.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from kvspec.impl.block_store import BlockStore

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass(frozen=True)
class Row:
    """One operation's median time per call, beside the plain copy of the same bytes."""

    name: str
    nbytes: int
    op_s: float
    copy_s: float
    ratio: float
    """Median over rounds of (plain copy time / operation time): the operation's bandwidth as
    a fraction of a plain copy's (1.0 = as fast)."""


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def paired_seconds_per_call(
    op: Callable[[], object],
    baseline: Callable[[], object],
    device: torch.device,
    repeats: int,
    min_batch_s: float,
) -> tuple[float, float, float]:
    """Median seconds per call of ``op`` and of ``baseline``, and the median of their paired
    ratio, from ``repeats`` rounds that each time one batch of each back to back.

    Pairing matters on a shared machine: a burst of load from another process slows both
    halves of a round, so the per-round ratio stays steady while absolute times wander.
    """

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def batch(fn: Callable[[], object], calls: int) -> float:
        sync()
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        sync()
        return (time.perf_counter() - start) / calls

    def calibrate(fn: Callable[[], object]) -> int:
        batch(fn, 1)  # warm-up: first-touch page faults, allocator caches, kernel selection
        calls = 1
        while batch(fn, calls) * calls < min_batch_s and calls < 1 << 16:
            calls *= 4
        return calls

    op_calls, baseline_calls = calibrate(op), calibrate(baseline)
    rounds = [(batch(op, op_calls), batch(baseline, baseline_calls)) for _ in range(repeats)]
    return (
        statistics.median(op_s for op_s, _ in rounds),
        statistics.median(base_s for _, base_s in rounds),
        statistics.median(base_s / op_s for op_s, base_s in rounds),
    )


def plain_copy(nbytes: int, dtype: torch.dtype, device: torch.device) -> Callable[[], object]:
    """``dst.copy_(src)`` over two contiguous buffers of ``nbytes``: the bandwidth ceiling."""
    elems = nbytes // torch.tensor([], dtype=dtype).element_size()
    src = torch.randn(elems, device=device).to(dtype)
    dst = torch.empty_like(src)
    return lambda: dst.copy_(src)


def run(args: argparse.Namespace) -> tuple[list[Row], BlockStore]:
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    gather_blocks = -(-args.gather_tokens // args.block_size)
    # Sources and destinations are disjoint samples; block 0 (null) is never used.
    num_blocks = 1 + max(2 * max(args.copy_blocks), gather_blocks)
    store = BlockStore(
        num_blocks, args.block_size, args.layers, args.kv_heads, args.head_size,
        dtype=dtype, device=device,
    )  # fmt: skip
    rng = random.Random(0)

    def row(name: str, nbytes: int, op: Callable[[], object]) -> Row:
        baseline = plain_copy(nbytes, dtype, device)
        times = paired_seconds_per_call(
            op, baseline, device, args.repeats, args.min_batch_ms / 1000
        )
        return Row(name, nbytes, *times)

    rows = []
    for n in args.copy_blocks:
        ids = rng.sample(range(1, num_blocks), 2 * n)
        src, dst = ids[:n], ids[n:]
        name = f"copy_blocks {n} block{'s' if n > 1 else ''}"
        rows.append(row(name, n * store.block_nbytes, lambda s=src, d=dst: store.copy_blocks(s, d)))
    table = rng.sample(range(1, num_blocks), gather_blocks)
    gather_bytes = 2 * args.gather_tokens * args.kv_heads * args.head_size * store.kv.element_size()
    gather = lambda: store.gather(table, args.gather_tokens, layer=0)  # noqa: E731
    rows.append(row(f"gather {args.gather_tokens} tokens", gather_bytes, gather))
    return rows, store


def human_bytes(nbytes: int) -> str:
    for unit, size in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if nbytes >= size:
            return f"{nbytes / size:g} {unit}"
    return f"{nbytes} B"


def report(rows: Sequence[Row], store: BlockStore, args: argparse.Namespace) -> str:
    device = torch.device(args.device)
    if device.type == "cuda":
        where = f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    else:
        where = f"cpu, {torch.get_num_threads()} torch threads"
    load = ""
    if hasattr(os, "getloadavg"):  # a shared machine's other work shows in absolute figures
        load = ", load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())
    lines = [
        f"machine: {cpu_name()}, {os.cpu_count()} cores{load}; torch {torch.__version__}; "
        f"python {platform.python_version()}",
        f"device:  {where}",
        f"store:   {store.num_layers} layers x {store.num_blocks} blocks x {store.block_size} "
        f"tokens x {store.num_kv_heads} KV heads x {store.head_size}, {args.dtype}; "
        f"{human_bytes(store.block_nbytes)} per block (K and V, all layers)",
        f"timing:  median of {args.repeats} rounds, each one batch of the operation and one "
        f"of the plain copy, each batch >= {args.min_batch_ms:g} ms",
        "",
        f"{'operation':<24}{'bytes':>10}{'us/call':>11}{'GB/s':>9}{'copy GB/s':>11}{'ratio':>8}",
    ]
    for row in rows:
        lines.append(
            f"{row.name:<24}{human_bytes(row.nbytes):>10}{row.op_s * 1e6:>11.1f}"
            f"{row.nbytes / row.op_s / 1e9:>9.2f}{row.nbytes / row.copy_s / 1e9:>11.2f}"
            f"{row.ratio:>8.2f}"
        )
    single = next((r for r in rows if r.name == "copy_blocks 1 block"), None)
    if single is not None:
        lines += [
            "",
            f"per-call overhead, 1-block copy_blocks: {(single.op_s - single.copy_s) * 1e6:.1f} us "
            f"({single.op_s * 1e6:.1f} us per call, plain copy of the same "
            f"{human_bytes(single.nbytes)} {single.copy_s * 1e6:.1f} us)",
        ]
    lines.append(
        "ratio: operation bandwidth / plain contiguous copy bandwidth, median of paired rounds"
    )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.block_store",
        description="Block-store copy_blocks and gather bandwidth against a plain copy.",
    )
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--dtype", default="float16", choices=sorted(DTYPES))
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--head-size", type=int, default=128)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument(
        "--copy-blocks",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[1, 16, 256],
        help="comma-separated batch sizes (default 1,16,256)",
    )
    parser.add_argument("--gather-tokens", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--min-batch-ms", type=float, default=20.0)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads; 0 keeps torch's choice (default 1: on a machine shared with "
        "other work, a parallel copy waits on its slowest thread and the figures scatter)",
    )
    args = parser.parse_args(argv)
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch reports no CUDA device")
    if args.threads < 0:
        parser.error("--threads: expected 0 (torch's choice) or a positive count")
    if min(args.copy_blocks) < 1:
        parser.error("--copy-blocks: batch sizes must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    threads = torch.get_num_threads()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    try:
        rows, store = run(args)
        print(report(rows, store, args))
    finally:
        torch.set_num_threads(threads)  # main() may run inside a larger process (tests)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
