"""The mutant zoo: named buggy allocators that prove the suite catches real mistakes.

Each :class:`Mutant` is one realistic bug in an otherwise correct allocator, with a
docstring (on its class) saying what mistake it models. ``kvspec mutants`` runs the
suite against every one and prints a kill matrix; a test asserts every mutant is caught.
Where the same bug can be written as a buggy transition of the z3 model, ``symbolic``
names its twin (``kvspec prove --mutant NAME``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from kvspec.conformance.mutants import pool as pool_mutants
from kvspec.conformance.pool.protocol import PoolTarget
from kvspec.conformance.pool.targets import impl_factory_for


@dataclass(frozen=True)
class Mutant:
    name: str
    level: str
    factory: Callable[..., PoolTarget]
    summary: str
    profile: str = "current"
    symbolic: str | None = None


def _pool(name: str, cls: type, *, symbolic: bool = True, profile: str = "current") -> Mutant:
    summary = (cls.__doc__ or "").strip().splitlines()[0]
    return Mutant(
        name=name,
        level="pool",
        factory=impl_factory_for(cls),
        summary=summary,
        profile=profile,
        symbolic=name if symbolic else None,
    )


POOL_MUTANTS: list[Mutant] = [
    _pool("forward-free", pool_mutants.ForwardOrderFree),
    _pool("stale-hash-on-reuse", pool_mutants.StaleHashOnReuse),
    _pool("hash-cleared-after-ref-set", pool_mutants.HashClearedAfterRefSet),
    _pool("touch-leaves-in-queue", pool_mutants.TouchLeavesBlockInQueue),
    _pool("usage-counts-null", pool_mutants.UsageCountsNull),
    _pool("null-returned-to-queue", pool_mutants.NullReturnedToQueue),
    _pool("fork-without-decrement", pool_mutants.ForkWithoutDecrement),
    _pool("fork-copies-exclusive", pool_mutants.ForkCopiesExclusiveBlock),
    _pool("free-of-ref0-goes-negative", pool_mutants.FreeOfUnreferencedGoesNegative),
    _pool("reset-while-in-use", pool_mutants.ResetWhileInUse),
    # No z3 twin: the symbolic model allocates one block per step, so it cannot ask for more
    # blocks than are free in one call.
    _pool(
        "over-allocation-mutates", pool_mutants.OverAllocationMutatesBeforeRaising,
        symbolic=False,
    ),
    _pool("collapse-duplicate-hash", pool_mutants.DuplicateHashCollapsed),
    _pool("touch-counts-null", pool_mutants.TouchCountsNull),
    _pool("all-frees-appended", pool_mutants.AllFreedBlocksAppended),
]

MUTANTS: dict[str, Mutant] = {m.name: m for m in POOL_MUTANTS}


def register(mutants: list[Mutant]) -> None:
    """Add mutants of another level (manager, store) to the zoo."""
    for m in mutants:
        if m.name in MUTANTS:
            raise ValueError(f"mutant {m.name!r} is registered twice")
        MUTANTS[m.name] = m

# The manager level's mutants (conformance/mutants/manager.py) build their Mutant records
# from the class above, so they join the zoo once it exists.
from kvspec.conformance.mutants.manager import MANAGER_MUTANTS  # noqa: E402

register(MANAGER_MUTANTS)

# The content level's store mutants (conformance/mutants/store_zoo.py). Their classes need
# torch and load only when a content check runs them.
from kvspec.conformance.mutants.store_zoo import STORE_MUTANTS  # noqa: E402

register(STORE_MUTANTS)
