"""The mutant zoo: named buggy allocators that prove the suite catches real mistakes.

Each :class:`Mutant` is one realistic bug in an otherwise correct allocator, with a
docstring (on its class) saying what mistake it models. ``kvspec mutants`` runs the
suite against every one and prints a kill matrix; a test asserts every mutant is caught.
Where the same bug can be written as a buggy transition of the z3 model, ``symbolic``
names its twin (``kvspec prove --mutant NAME``).
"""

from __future__ import annotations

from kvspec.conformance.mutants import pool as pool_mutants
from kvspec.conformance.mutants.hybrid import HYBRID_MUTANTS
from kvspec.conformance.mutants.manager import MANAGER_MUTANTS
from kvspec.conformance.mutants.store_zoo import STORE_MUTANTS
from kvspec.conformance.mutants.zoo import MUTANTS, Mutant, register
from kvspec.conformance.pool.targets import impl_factory_for


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
    _pool("evict-drops-every-copy", pool_mutants.EvictionDropsEveryCopy, symbolic=False),
    _pool("evict-pops-wrong-copy", pool_mutants.EvictionPopsTheWrongCopy, symbolic=False),
    _pool("touch-revives-in-place", pool_mutants.TouchRevivesInPlace, symbolic=False),
    _pool("fork-copies-the-hash", pool_mutants.ForkCopiesTheHash, symbolic=False),
    _pool("fork-uncaches-the-original", pool_mutants.ForkUncachesTheOriginal, symbolic=False),
    _pool("free-queues-repeats-twice", pool_mutants.FreeQueuesRepeatsTwice, symbolic=False),
]

register(POOL_MUTANTS)

register(MANAGER_MUTANTS)
register(HYBRID_MUTANTS)
# The store mutants' classes need torch: they load only when a content check runs them.
register(STORE_MUTANTS)

__all__ = ["MUTANTS", "Mutant", "register"]
