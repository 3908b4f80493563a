"""The block store's boundary: caller input in, validated ids and tensors (or one error) out.

Every public ``BlockStore`` method runs its arguments through these checks before it touches
a tensor, so a refused call leaves the cache's bytes exactly as they were. Each refusal is a
:class:`BlockStoreError` whose one-line message names the operation, the argument, the value
and what was expected.

Why two paths for ids
    A list, tuple or range is checked in Python, which for the one to a few hundred ids a
    scheduler passes costs less than launching a single tensor op (a one-block
    ``copy_blocks`` must stay within a few microseconds of a plain copy). A tensor of ids is
    checked with tensor reductions (one ``aminmax``, one ``unique`` where ids must be
    distinct), so a 100k-slot mapping never becomes a Python loop. Either way each id is
    checked once, and a call keeps the form it was given until it needs the other.

What counts as an id
    Exactly ``int`` (``bool`` is an ``int`` to Python but a block id of ``True`` is a bug),
    or an integer tensor. Floats are refused even when integral: ``2.0`` as a slot means the
    caller computed it with ``/`` where ``//`` was meant, and NaN or an infinity cannot be an
    id at all. Other containers (sets, dicts, strings, generators, arrays) are refused
    rather than guessed at: a set has no order, and the order of ids is the copy's pairing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from kvspec.impl.errors import KVCacheError

IdsLike = Sequence[int] | torch.Tensor
"""What a store method takes as block ids or slots: a list, tuple or range of ints, or a 1-d
integer tensor on the CPU or the store's device."""

_ID_SEQUENCES = (list, tuple, range)
_ID_DTYPES = frozenset({torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64})


class BlockStoreError(KVCacheError, ValueError):
    """A block-store call was malformed: an argument of the wrong type, an id or slot out of
    range, a repeated destination, a tensor of the wrong shape, dtype or device."""


class CopyOnWriteError(BlockStoreError):
    """A write (or a copy's destination) targets a block that is not exclusively owned and
    uncached: shared, hashed, free, or the null block. Copy-on-write must happen first."""


def is_int(value: object) -> bool:
    """An ``int`` and not a ``bool`` (nor any other ``int`` subclass)."""
    return type(value) is int


def check_int(op: str, name: str, value: object, low: int, high: int | None = None) -> int:
    """``value`` as an int in ``[low, high)`` (no upper bound when ``high`` is None)."""
    if not is_int(value) or value < low or (high is not None and value >= high):
        bound = f"{low} <= {name}" + (f" < {high}" if high is not None else "")
        raise BlockStoreError(f"{op}: {name} is {value!r}; expected an int with {bound}")
    return value


def check_scale(op: str, scale: object) -> float | None:
    """An attention scale: None (the default) or a finite positive real number."""
    if scale is None:
        return None
    if type(scale) not in (int, float) or not math.isfinite(scale) or scale <= 0:
        raise BlockStoreError(f"{op}: scale {scale!r}; expected None or a finite number > 0")
    return float(scale)


def check_device(op: str, name: str, tensor: torch.Tensor, device: torch.device) -> None:
    """A tensor the store reads must live on the store's device or on the CPU (a host to
    device copy is an ordinary cache write); anything else needs an explicit move."""
    if tensor.device != device and tensor.device.type != "cpu":
        allowed = "cpu" if device.type == "cpu" else f"the store's device {device} or cpu"
        raise BlockStoreError(f"{op}: {name} is on {tensor.device}; expected {allowed}")


def check_ids(
    op: str, what: str, ids: object, limit: int, device: torch.device
) -> list[int] | torch.Tensor:
    """``ids`` validated as ids in ``[0, limit)``: a list of ints for sequence input, the
    same tensor for tensor input (not yet moved or cast)."""
    if type(ids) in _ID_SEQUENCES:
        values = ids if type(ids) is list else list(ids)  # type: ignore[call-overload]
        for value in values:  # a plain loop, not all() over a generator: no frame per call
            if type(value) is not int:
                index = next(i for i, v in enumerate(values) if v is value)
                raise BlockStoreError(
                    f"{op}: {what}[{index}] is {value!r} ({type(value).__name__}); expected an "
                    "int"
                )
        if values and (min(values) < 0 or max(values) >= limit):
            bad = next(v for v in values if not 0 <= v < limit)
            raise _out_of_range(op, what, bad, limit)
        return values
    if isinstance(ids, torch.Tensor):
        if ids.layout is not torch.strided or ids.dim() != 1 or ids.dtype not in _ID_DTYPES:
            layout = "" if ids.layout is torch.strided else f"{ids.layout} "
            raise BlockStoreError(
                f"{op}: {what} is a {layout}tensor of shape {tuple(ids.shape)} and dtype "
                f"{ids.dtype}; expected a 1-d integer tensor"
            )
        check_device(op, what, ids, device)
        if ids.numel():
            low, high = (int(x) for x in torch.aminmax(ids))
            if low < 0 or high >= limit:
                outside = ids[(ids < 0) | (ids >= limit)]
                raise _out_of_range(op, what, int(outside[0]), limit)
        return ids
    raise BlockStoreError(
        f"{op}: {what} has type {type(ids).__name__}; expected a list, tuple or range of ints "
        "or a 1-d integer tensor"
    )


def first_repeat(ids: list[int] | torch.Tensor) -> int | None:
    """The smallest id that occurs twice (in a tensor) or the first to recur (in a list), or
    None when all are distinct."""
    if isinstance(ids, torch.Tensor):
        if torch.unique(ids).numel() == ids.numel():
            return None
        ordered = torch.sort(ids).values
        return int(ordered[1:][ordered[1:] == ordered[:-1]][0])
    if len(set(ids)) == len(ids):
        return None
    seen: set[int] = set()
    for value in ids:
        if value in seen:
            return value
        seen.add(value)
    raise AssertionError("unreachable: a repeat was counted but not found")


def _out_of_range(op: str, what: str, value: int, limit: int) -> BlockStoreError:
    return BlockStoreError(
        f"{op}: {what} entry {value} is out of range; expected 0 <= value < {limit}"
    )


def check_kv_tensor(
    op: str,
    name: str,
    tensor: object,
    shape: tuple[int, ...],
    dtype: torch.dtype,
    device: torch.device,
) -> torch.Tensor:
    """A tensor of K or V to write, checked for type, layout, dtype, shape and device."""
    if not isinstance(tensor, torch.Tensor):
        raise BlockStoreError(f"{op}: {name} has type {type(tensor).__name__}; expected a tensor")
    if tensor.layout is not torch.strided:
        raise BlockStoreError(f"{op}: {name} is a {tensor.layout} tensor; expected a dense one")
    if tensor.dtype != dtype:
        raise BlockStoreError(
            f"{op}: {name} has dtype {tensor.dtype}; expected the store's {dtype} "
            "(a silent cast would change the bits)"
        )
    if tuple(tensor.shape) != shape:
        raise BlockStoreError(f"{op}: {name} has shape {tuple(tensor.shape)}; expected {shape}")
    check_device(op, name, tensor, device)
    return tensor
