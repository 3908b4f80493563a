"""The store mutants' zoo records, without importing torch.

A store mutant is a *target pair*: kvspec's correct pool and a broken ``BlockStore``
subclass (``kvspec.conformance.mutants.store``). The pair travels as one pool factory that carries
a ``store`` attribute, the import path of its store class, the same way a factory carries
``unsupported``. The pool level ignores the attribute, so ``kvspec check --target
mutant:NAME`` at the pool level drives the correct pool and passes: ids cannot see these
bugs. The content level loads the class and puts the K/V through it.

Summaries are the first lines of the classes' docstrings, written out here so that listing
the zoo does not import torch; a test keeps the two in step.
"""

from __future__ import annotations

from kvspec.conformance.mutants.zoo import MUTANTS, Mutant, register
from kvspec.conformance.pool.protocol import PoolFactory
from kvspec.conformance.pool.targets import ImplPool

STORE_MODULE = "kvspec.conformance.mutants.store"


def impl_factory_with_store(store: str) -> PoolFactory:
    """kvspec's own pool, paired with the store class at import path ``store``
    (``"module.path:Class"``) for the content level."""

    def factory(
        num_blocks: int, *, enable_caching: bool = True, profile: str = "current"
    ) -> ImplPool:
        return ImplPool(num_blocks, enable_caching=enable_caching, profile=profile)

    name = store.rpartition(":")[2]
    factory.__name__ = factory.__qualname__ = f"impl_pool_with_{name}"
    factory.__doc__ = f"kvspec's BlockPool, with the block store {store}."
    factory.unsupported = frozenset()  # type: ignore[attr-defined]
    factory.store = store  # type: ignore[attr-defined]
    return factory  # type: ignore[return-value]


def _store(name: str, cls_name: str, summary: str) -> Mutant:
    return Mutant(
        name=name,
        level="content",
        factory=impl_factory_with_store(f"{STORE_MODULE}:{cls_name}"),
        summary=summary,
    )


STORE_MUTANTS: list[Mutant] = [
    _store(
        "fork-shares-not-copies",
        "ForkSharesInsteadOfCopying",
        "Fork hands out a new block but the copy is never issued: the child reads stale K/V.",
    ),
    _store(
        "copy-wrong-direction",
        "CopyWrongDirection",
        "``copy_blocks`` copies destination onto source: the shared block gets the stale copy.",
    ),
    _store(
        "copy-only-k",
        "CopyOnlyKeys",
        "``copy_blocks`` copies the K cache and forgets the V cache.",
    ),
    _store(
        "pad-write-overwrites-cached",
        "PaddedWriteWrapsPadSlot",
        "Padding slots (-1) wrap to the pool's last slot: a later hit reads overwritten K/V.",
    ),
]


def ensure_registered() -> dict[str, Mutant]:
    """Add the store mutants to the zoo unless they are there already; return them by name."""
    missing = [m for m in STORE_MUTANTS if m.name not in MUTANTS]
    if missing:
        register(missing)
    return {m.name: MUTANTS[m.name] for m in STORE_MUTANTS}
