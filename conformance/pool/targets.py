"""Pool targets: adapters exposing an allocator through
:class:`kvspec.conformance.pool.protocol.PoolTarget`.

:class:`ImplPool` wraps kvspec's own :class:`impl.BlockPool`. Its ``pool_cls`` argument takes
any subclass of ``BlockPool``, which is how the mutant zoo (deliberately broken subclasses)
plugs into the same adapter as the real allocator.

Loading a target by name
    :func:`load_factory` turns a ``--target`` string into a factory: ``"impl"`` is kvspec's
    allocator, ``"vllm"`` is upstream vLLM's ``BlockPool`` through
    ``kvspec.conformance.upstream.vllm_pool:vllm_pool_factory`` (imported only when asked for,
    since it
    needs vLLM installed), and ``"module.path:attr"`` is any importable factory (``attr`` may
    be dotted, e.g. ``"mypkg.pools:Factories.strict"``). ``"mutant:NAME"`` is a mutant of the
    zoo, to see what a failure report looks like.

Unsupported operations
    A target may lack an operation of the protocol (upstream has no ``fork_block``). Its
    factory then carries an attribute ``unsupported: frozenset[str]`` naming those methods,
    e.g. ``frozenset({"fork_block"})``; the suite never calls them and reports them as not
    checked. A factory without the attribute supports everything.
    :func:`unsupported_operations` reads the attribute and rejects names that are not
    protocol operations, so a typo cannot silently switch a check off.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from kvspec.conformance.errors import UsageError
from kvspec.conformance.pool.protocol import PoolFactory, PoolTarget
from kvspec.impl.block import KVCacheBlock, get_block_hash
from kvspec.impl.block_pool import BlockPool

#: Methods of :class:`PoolTarget`; ``unsupported`` may name only these.
OPERATIONS: frozenset[str] = frozenset(
    name for name, value in vars(PoolTarget).items() if not name.startswith("_") and callable(value)
)

#: Short names :func:`load_factory` understands besides ``module.path:attr``.
BUILTIN_TARGETS: dict[str, str] = {
    "impl": "kvspec.conformance.pool.targets:impl_pool_factory",
    "spec": "kvspec.conformance.pool.spec_target:spec_pool_factory",
    "vllm": "kvspec.conformance.upstream.vllm_pool:vllm_pool_factory",
}


class TargetSpecError(UsageError):
    """A ``--target`` string that does not name a loadable factory."""


class ImplPool:
    """:class:`PoolTarget` over kvspec's :class:`~kvspec.impl.BlockPool` (or a subclass), by
    integer id.

    Ids are resolved to blocks, and checked, before the pool is called, so an id out of range
    is refused with nothing changed. ``block_hash`` observes the content hash without the
    4-byte group id that the pool's keys carry; the adapter always uses group 0.
    """

    def __init__(
        self,
        num_blocks: int,
        *,
        enable_caching: bool = True,
        profile: str = "current",
        pool_cls: type[BlockPool] = BlockPool,
    ) -> None:
        self.pool: BlockPool = pool_cls(num_blocks, enable_caching=enable_caching, profile=profile)

    def _block(self, block_id: int, op: str) -> KVCacheBlock:
        return self.pool.get_block(block_id, op)

    def get_new_blocks(self, num_blocks: int) -> list[int]:
        return [block.block_id for block in self.pool.get_new_blocks(num_blocks)]

    def touch(self, block_ids: Sequence[int]) -> None:
        self.pool.touch(self.pool.get_blocks(block_ids, "touch"))

    def free_blocks(self, block_ids: Sequence[int]) -> None:
        self.pool.free_blocks(self.pool.get_blocks(block_ids, "free_blocks"))

    def cache_block(self, block_id: int, block_hash: bytes) -> None:
        self.pool.cache_block(self._block(block_id, "cache_block"), block_hash)

    def get_cached_block(self, block_hash: bytes) -> int | None:
        hit = self.pool.get_cached_block(block_hash)
        return None if hit is None else hit[0].block_id

    def reset_prefix_cache(self) -> bool:
        return self.pool.reset_prefix_cache()

    def fork_block(self, block_id: int) -> int:
        return self.pool.fork_block(self._block(block_id, "fork_block")).block_id

    def get_num_free_blocks(self) -> int:
        return self.pool.get_num_free_blocks()

    def get_usage(self) -> float:
        return self.pool.get_usage()

    # Observations are read once per block after every checked step: a plain id in range
    # reads the block directly; anything else goes through the pool's checks (and refusal).

    def ref_cnt(self, block_id: int) -> int:
        blocks = self.pool.blocks
        if block_id.__class__ is int and 0 <= block_id < len(blocks):
            return blocks[block_id].ref_cnt
        return self._block(block_id, "ref_cnt").ref_cnt

    def block_hash(self, block_id: int) -> bytes | None:
        blocks = self.pool.blocks
        if block_id.__class__ is int and 0 <= block_id < len(blocks):
            key = blocks[block_id].block_hash
        else:
            key = self._block(block_id, "block_hash").block_hash
        if key is None:
            return None
        h = get_block_hash(key)
        return h if h.__class__ is bytes else bytes(h)

    def free_block_ids(self) -> list[int]:
        return [block.block_id for block in self.pool.free_block_queue.get_all_free_blocks()]

    def __repr__(self) -> str:
        pool = self.pool
        return (
            f"ImplPool({type(pool).__name__}, num_blocks={pool.num_gpu_blocks}, "
            f"enable_caching={pool.enable_caching}, profile={pool.profile.name!r})"
        )


def impl_pool_factory(
    num_blocks: int, *, enable_caching: bool = True, profile: str = "current"
) -> ImplPool:
    """Factory for kvspec's own allocator (``--target impl``)."""
    return ImplPool(num_blocks, enable_caching=enable_caching, profile=profile)


impl_pool_factory.unsupported = frozenset()  # type: ignore[attr-defined]


def impl_factory_for(
    pool_cls: type[BlockPool], *, unsupported: frozenset[str] = frozenset()
) -> PoolFactory:
    """A factory driving ``pool_cls`` (a ``BlockPool`` subclass, such as a mutant)."""

    def factory(
        num_blocks: int, *, enable_caching: bool = True, profile: str = "current"
    ) -> ImplPool:
        return ImplPool(
            num_blocks, enable_caching=enable_caching, profile=profile, pool_cls=pool_cls
        )

    factory.__name__ = factory.__qualname__ = f"impl_factory_for_{pool_cls.__name__}"
    factory.__doc__ = f"Factory for {pool_cls.__module__}.{pool_cls.__qualname__}."
    factory.unsupported = _checked_unsupported(unsupported, factory.__name__)  # type: ignore[attr-defined]
    return factory  # type: ignore[return-value]


def _checked_unsupported(names: Any, owner: str) -> frozenset[str]:
    names = frozenset(names)
    unknown = names - OPERATIONS
    if unknown:
        raise TargetSpecError(
            f"{owner}: unsupported names {sorted(unknown)} are not PoolTarget operations; "
            f"expected a subset of {sorted(OPERATIONS)}"
        )
    return names


def unsupported_operations(factory: Callable[..., Any]) -> frozenset[str]:
    """The protocol operations ``factory``'s targets lack (empty when it says nothing)."""
    return _checked_unsupported(getattr(factory, "unsupported", frozenset()), repr(factory))


def load_factory(target: str) -> PoolFactory:
    """Resolve a ``--target`` string to a pool factory (see the module docstring)."""
    if not isinstance(target, str) or not target.strip():
        raise TargetSpecError(
            f"--target {target!r}: expected 'impl', 'vllm' or 'module.path:factory'"
        )
    if target.startswith("mutant:"):
        from kvspec.conformance.mutants import MUTANTS  # the zoo imports this module

        name = target.removeprefix("mutant:")
        if name not in MUTANTS:
            raise TargetSpecError(
                f"--target {target!r}: no mutant {name!r}; see kvspec mutants --list"
            )
        return MUTANTS[name].factory
    spec = BUILTIN_TARGETS.get(target.strip(), target.strip())
    module_name, sep, attr_path = spec.partition(":")
    if not sep or not module_name or not attr_path or ":" in attr_path:
        raise TargetSpecError(
            f"--target {target!r}: expected 'impl', 'vllm' or 'module.path:factory' "
            "(exactly one ':' between an importable module and an attribute)"
        )
    # Like ``python -m``: a user's module in the current directory is importable.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        hint = " (the 'vllm' target needs vLLM installed)" if target.strip() == "vllm" else ""
        raise TargetSpecError(
            f"--target {target!r}: cannot import module {module_name!r}{hint}: {exc}"
        ) from exc
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise TargetSpecError(
                f"--target {target!r}: module {module_name!r} has no attribute {attr_path!r}"
            ) from exc
    if not callable(obj):
        raise TargetSpecError(
            f"--target {target!r}: {attr_path!r} is a {type(obj).__name__}; expected a "
            "callable factory(num_blocks, *, enable_caching, profile)"
        )
    unsupported_operations(obj)  # fail now on a misspelt 'unsupported' entry
    return obj
