"""Block-store bandwidth: ``copy_blocks`` and ``gather`` against a plain copy and contenders.

``kvspec bench store [--device cpu|cuda] ...``

Every case (a ``copy_blocks`` of ``n`` blocks, a ``gather`` of one request) is timed for the
store's own method, for the other ways one might write it in torch (the *contenders*), and for
``dst.copy_(src)`` over two contiguous buffers of the same number of bytes on the same device.
That plain copy is the baseline: it reads and writes each byte once with no index arithmetic,
the ceiling an indexed copy can approach. Each figure is reported as a ratio of bandwidths
against it (1.0 = as fast as a plain copy); the ratio, not the absolute GB/s, is the figure
to compare across machines, since the absolute one depends on the memory system and, on a
shared CPU, on what else runs.

Contenders (each checked to produce the store's result, bit for bit, before it is timed):

* ``copy_blocks``: a Python loop doing one ``copy_`` per block over ``kv[:, :, id]``; an
  ``index_select`` of the source blocks then an ``index_copy_`` into the destinations, on
  ``kv`` itself (dim 2); and the same pair over whole blocks viewed as 16-byte words (the
  cheapest per-element form an indexed copy can take).
* ``gather``: a per-block loop of ``copy_`` into a fresh buffer, and ``index_select`` over
  ``kv[layer]``'s block axis.

One reference row per ``copy_blocks`` case is not a contender: the plain copy itself, issued
as one block-sized copy per block (``_foreach_copy_`` over slices of the baseline's own kind of
buffers). It prices what splitting a copy into blocks costs with no store and no index: the
gap between it and the plain copy is the part of ``copy_blocks``' gap that comes from copying
block by block at all, not from the store.

Timing: each callable gets a warm-up call, then calls are batched until a batch lasts
``--min-batch-ms``. ``--repeats`` rounds each time one batch of every callable of a case,
baseline included, back to back; the medians give the times, and the median of the per-round
ratios gives the ratios, so a burst of load from another process slows a whole round alike.
On CUDA the device is synchronised before and after every batch. On CPU the default is one
torch thread (``--threads``): figures on a shared machine scatter less.
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
from kvspec.conformance.cli import Parser
from kvspec.impl.block_store import BlockStore

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
BASELINE = "plain copy (baseline)"
REFERENCE = "reference: "
SPLIT = REFERENCE + "plain copy, block by block"

Op = Callable[[], object]


@dataclass(frozen=True)
class Row:
    """One callable's median time per call in one case, beside the plain copy of the same
    bytes timed in the same rounds."""

    case: str
    name: str
    nbytes: int
    op_s: float
    copy_s: float
    ratio: float
    """Median over rounds of (plain copy time / this time): the bandwidth as a fraction of a
    plain copy's (1.0 = as fast)."""

    @property
    def is_store(self) -> bool:
        return self.name.startswith("BlockStore.")

    @property
    def is_reference(self) -> bool:
        """A measurement that explains the others, not a way to do the operation."""
        return self.name.startswith(REFERENCE)


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


def time_interleaved(
    ops: dict[str, Op], device: torch.device, repeats: int, min_batch_s: float
) -> dict[str, list[float]]:
    """Seconds per call of each op in each of ``repeats`` rounds; every round times one
    batch of every op, back to back, so a burst of load from elsewhere lands on all of them."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def batch(fn: Op, calls: int) -> float:
        sync()
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        sync()
        return (time.perf_counter() - start) / calls

    def calibrate(fn: Op) -> int:
        batch(fn, 1)  # warm-up: first-touch page faults, allocator caches, kernel selection
        calls = 1
        while batch(fn, calls) * calls < min_batch_s and calls < 1 << 16:
            calls *= 4
        return calls

    counts = {name: calibrate(fn) for name, fn in ops.items()}
    seconds: dict[str, list[float]] = {name: [] for name in ops}
    for _ in range(repeats):
        for name, fn in ops.items():
            seconds[name].append(batch(fn, counts[name]))
    return seconds


def plain_copy(nbytes: int, dtype: torch.dtype, device: torch.device) -> Op:
    """``dst.copy_(src)`` over two contiguous buffers of ``nbytes``: the bandwidth ceiling."""
    elems = nbytes // dtype.itemsize
    src = torch.randn(elems, device=device).to(dtype)
    dst = torch.empty_like(src)
    return lambda: dst.copy_(src)


def plain_copy_in_blocks(n: int, block_nbytes: int, dtype: torch.dtype,
                         device: torch.device) -> Op:
    """The plain copy issued as ``n`` block-sized copies in one ``_foreach_copy_``: what
    splitting a copy into blocks costs by itself, with no store and no indexing."""
    src = torch.randn(n * block_nbytes // dtype.itemsize, device=device).to(dtype)
    dst = torch.empty_like(src)
    srcs, dsts = list(src.view(n, -1).unbind(0)), list(dst.view(n, -1).unbind(0))
    return lambda: torch._foreach_copy_(dsts, srcs)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    word = {1: torch.uint8, 2: torch.int16, 4: torch.int32}[a.element_size()]
    return a.shape == b.shape and torch.equal(a.contiguous().view(word), b.contiguous().view(word))


def copy_contenders(store: BlockStore, src: list[int], dst: list[int]) -> dict[str, Op]:
    """``copy_blocks(src, dst)`` and the other ways to write it, index tensors prebuilt."""
    kv = store.kv
    device = store.device
    src_t = torch.tensor(src, device=device)
    dst_t = torch.tensor(dst, device=device)
    # Whole blocks as rows of 16-byte words: kv permuted back to its block-major storage.
    blocks = kv.permute(2, 0, 1, 3, 4, 5)
    word = torch.complex128 if store.block_nbytes % 16 == 0 else store.dtype
    rows = blocks.reshape(store.num_blocks, -1).view(word)
    assert rows.data_ptr() == kv.data_ptr(), "block rows must view the store, not a copy"

    def loop() -> None:
        for s, d in zip(src, dst, strict=True):
            kv[:, :, d].copy_(kv[:, :, s])

    return {
        "BlockStore.copy_blocks": lambda: store.copy_blocks(src, dst),
        "per-block copy_ loop": loop,
        "index_select + index_copy_ on kv": lambda: kv.index_copy_(
            2, dst_t, kv.index_select(2, src_t)
        ),
        "index_select + index_copy_, word rows": lambda: rows.index_copy_(
            0, dst_t, rows.index_select(0, src_t)
        ),
    }


def gather_contenders(
    store: BlockStore, table: list[int], num_tokens: int, layer: int
) -> dict[str, Callable[[], tuple[torch.Tensor, torch.Tensor]]]:
    """``gather(table, num_tokens, layer=layer)`` and the other ways to write it."""
    kv = store.kv[layer]  # [2, num_blocks, block_size, heads, head_size]
    bs = store.block_size
    table_t = torch.tensor(table, device=store.device)
    dense_shape = (2, len(table) * bs, store.num_kv_heads, store.head_size)

    def loop() -> tuple[torch.Tensor, torch.Tensor]:
        out = kv.new_empty(dense_shape)
        for i, b in enumerate(table):
            out[:, i * bs : (i + 1) * bs].copy_(kv[:, b])
        return out[0, :num_tokens], out[1, :num_tokens]

    def index_select() -> tuple[torch.Tensor, torch.Tensor]:
        out = kv.index_select(1, table_t).view(dense_shape)
        return out[0, :num_tokens], out[1, :num_tokens]

    return {
        "BlockStore.gather": lambda: store.gather(table, num_tokens, layer=layer),
        "per-block copy_ loop": loop,
        "index_select on kv[layer]": index_select,
    }


def check_copy_contender(store: BlockStore, name: str, op: Op, src: list[int],
                         dst: list[int]) -> None:
    """Run ``op`` once on random bits and require exactly a block copy: destinations hold
    their sources, every other block is untouched."""
    store.kv.view(torch.int16 if store.kv.element_size() == 2 else torch.int32).random_()
    before = store.kv.clone()
    op()
    expected = before.clone()
    expected[:, :, dst] = before[:, :, src]
    if not same_bits(store.kv, expected):
        raise AssertionError(f"contender {name!r} does not copy blocks like copy_blocks")


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
    cases: list[tuple[str, int, dict[str, Op]]] = []
    for n in args.copy_blocks:
        ids = rng.sample(range(1, num_blocks), 2 * n)
        src, dst = ids[:n], ids[n:]
        ops = copy_contenders(store, src, dst)
        for name, op in ops.items():
            check_copy_contender(store, name, op, src, dst)
        case = f"copy_blocks {n} block{'s' if n > 1 else ''}"
        split = plain_copy_in_blocks(n, store.block_nbytes, dtype, device)
        cases.append((case, n * store.block_nbytes, {**ops, SPLIT: split}))

    table = rng.sample(range(1, num_blocks), gather_blocks)
    gathers = gather_contenders(store, table, args.gather_tokens, layer=0)
    want = gathers["BlockStore.gather"]()
    for name, gather in gathers.items():
        if not all(same_bits(x, y) for x, y in zip(gather(), want, strict=True)):
            raise AssertionError(f"contender {name!r} does not gather like BlockStore.gather")
    gather_bytes = 2 * args.gather_tokens * args.kv_heads * args.head_size * dtype.itemsize
    cases.append((f"gather {args.gather_tokens} tokens", gather_bytes, dict(gathers)))

    rows = []
    for case, nbytes, ops in cases:
        seconds = time_interleaved(
            {BASELINE: plain_copy(nbytes, dtype, device), **ops},
            device, args.repeats, args.min_batch_ms / 1000,
        )  # fmt: skip
        base = seconds.pop(BASELINE)
        for name, times in seconds.items():
            ratio = statistics.median(b / t for b, t in zip(base, times, strict=True))
            rows.append(
                Row(case, name, nbytes, statistics.median(times), statistics.median(base), ratio)
            )
    return rows, store


def human_bytes(nbytes: int) -> str:
    for unit, size in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if nbytes >= size:
            return f"{nbytes / size:g} {unit}"
    return f"{nbytes} B"


def verdicts(rows: Sequence[Row]) -> list[str]:
    """Per case: the store's ratio, and whether it is ahead of every contender, judged by the
    same median ratios the table prints."""
    lines = []
    for case in dict.fromkeys(row.case for row in rows):
        mine = next(r for r in rows if r.case == case and r.is_store)
        others = [r for r in rows if r.case == case and not (r.is_store or r.is_reference)]
        best = max(others, key=lambda r: r.ratio)
        ahead = "ahead of" if mine.ratio > best.ratio else "NOT ahead of"
        lines.append(
            f"{case}: {mine.name} at {mine.ratio:.2f}x plain copy, {ahead} every contender "
            f"(closest: {best.name} at {best.ratio:.2f}x)"
        )
    return lines


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
        f"timing:  median of {args.repeats} rounds, each one batch of every callable of a "
        f"case and of the plain copy, each batch >= {args.min_batch_ms:g} ms",
        "",
        f"{'case / callable':<40}{'bytes':>9}{'us/call':>11}{'GB/s':>8}{'copy GB/s':>11}"
        f"{'ratio':>7}",
    ]
    case = None
    for row in rows:
        if row.case != case:
            case = row.case
            lines.append(f"{case:<40}{human_bytes(row.nbytes):>9}")
        lines.append(
            f"  {row.name:<38}{'':>9}{row.op_s * 1e6:>11.1f}{row.nbytes / row.op_s / 1e9:>8.2f}"
            f"{row.nbytes / row.copy_s / 1e9:>11.2f}{row.ratio:>7.2f}"
        )
    lines += ["", *verdicts(rows)]
    single = next((r for r in rows if r.case == "copy_blocks 1 block" and r.is_store), None)
    if single is not None:
        lines.append(
            f"per-call overhead, 1-block copy_blocks: {(single.op_s - single.copy_s) * 1e6:.1f} us "
            f"({single.op_s * 1e6:.1f} us per call, plain copy of the same "
            f"{human_bytes(single.nbytes)} {single.copy_s * 1e6:.1f} us)"
        )
    lines.append(
        "ratio: bandwidth / plain contiguous copy bandwidth, median of the paired rounds"
    )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = Parser(
        prog="kvspec bench store",
        description="Block-store copy_blocks and gather bandwidth against a plain copy and "
        "the contenders.",
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
    if args.gather_tokens < 1:
        parser.error("--gather-tokens: expected at least 1")
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
