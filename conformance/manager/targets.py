"""Manager targets: adapters exposing a KV-cache manager through :class:`ManagerTarget`.

:class:`ImplManager` wraps kvspec's own :class:`kvspec.impl.kv_cache_manager.KVCacheManager`. Its
``manager_cls`` argument takes any subclass, which is how the manager mutants (deliberately
broken subclasses) plug into the same adapter as the real manager.

The adapter plays the part of upstream's scheduler-side ``Request`` bookkeeping: it keeps
one ``kvspec.impl.request.Request`` per id, sets ``num_computed_tokens`` and counts preemptions on
it, and resolves block ids to the pool's blocks before calling the manager.

Loading a manager target by name
    :func:`load_manager_factory` turns a ``--target`` string into a manager factory:
    ``"impl"`` is kvspec's manager, ``"module.path:attr"`` any importable factory.
    :func:`factory_level` tells a manager factory from a pool factory: an attribute
    ``level`` when present, else whether the factory takes a ``block_size`` parameter.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from operator import attrgetter
from typing import Any

from kvspec.conformance.manager.protocol import (
    STATS_FIELDS,
    ManagerFactory,
    RequestRegistry,
)
from kvspec.conformance.pool.targets import TargetSpecError, load_factory
from kvspec.impl.block import get_block_hash
from kvspec.impl.kv_cache_manager import KVCacheManager
from kvspec.impl.request import Request

#: Short names :func:`load_manager_factory` understands besides ``module.path:attr``.
BUILTIN_MANAGER_TARGETS: dict[str, str] = {
    "impl": "kvspec.conformance.manager.targets:impl_manager_factory",
    "vllm": "kvspec.conformance.upstream.vllm_manager:vllm_manager_factory",
}


_read_stats = attrgetter(*STATS_FIELDS)


class ImplManager(RequestRegistry):
    """:class:`ManagerTarget` over kvspec's :class:`~kvspec.impl.kv_cache_manager.KVCacheManager`.

    LoRA requests get ``lora_path=""``: the protocol names an adapter by its name alone,
    and the spec's current-profile key for it is ``("lora", name, "")``.
    """

    def __init__(
        self,
        num_blocks: int,
        block_size: int,
        *,
        enable_caching: bool = True,
        profile: str = "current",
        manager_cls: type[KVCacheManager] = KVCacheManager,
    ) -> None:
        self.manager: KVCacheManager = manager_cls(
            num_blocks, block_size, enable_caching=enable_caching, profile=profile,
            log_stats=True,
        )
        self.requests: dict[str, Request] = {}

    # -- requests (the scheduler's side) ---------------------------------------------------

    def add_request(
        self,
        request_id: str,
        prompt_token_ids: Sequence[int],
        *,
        lora_name: str | None = None,
        cache_salt: str | None = None,
    ) -> None:
        self._require_new(request_id)
        request = Request(
            request_id,
            list(prompt_token_ids),
            block_hasher=self.manager.block_hasher,
            lora_name=lora_name,
            lora_path="" if lora_name is not None else None,
            cache_salt=cache_salt,
        )
        self.requests[request_id] = request

    # -- the manager -----------------------------------------------------------------------

    def get_computed_blocks(self, request_id: str) -> tuple[list[int], int]:
        request = self._request(request_id, "get_computed_blocks")
        blocks, num_tokens = self.manager.get_computed_blocks(request)
        return [b.block_id for b in blocks], num_tokens

    def allocate_slots(
        self,
        request_id: str,
        num_new_tokens: int,
        num_new_computed_tokens: int = 0,
        new_computed_blocks: Sequence[int] = (),
        num_lookahead_tokens: int = 0,
    ) -> list[int] | None:
        request = self._request(request_id, "allocate_slots")
        hits = self.manager.block_pool.get_blocks(new_computed_blocks, "allocate_slots")
        new = self.manager.allocate_slots(
            request, num_new_tokens, num_new_computed_tokens, hits or None,
            num_lookahead_tokens,
        )
        return None if new is None else [b.block_id for b in new]

    def free(self, request_id: str) -> None:
        self.manager.free(self._request(request_id, "free"))

    def preempt(self, request_id: str) -> None:
        request = self._request(request_id, "preempt")
        self.manager.free(request)
        request.num_computed_tokens = 0
        request.num_preemptions += 1

    def reset_prefix_cache(self) -> bool:
        return self.manager.reset_prefix_cache()

    # -- observations ----------------------------------------------------------------------

    def get_usage(self) -> float:
        return self.manager.usage

    def get_num_free_blocks(self) -> int:
        return self.manager.block_pool.get_num_free_blocks()

    # Observations are read once per block after every checked step: a plain id in range
    # reads the block directly; anything else goes through the pool's checks (and refusal).

    def ref_cnt(self, block_id: int) -> int:
        blocks = self.manager.block_pool.blocks
        if block_id.__class__ is int and 0 <= block_id < len(blocks):
            return blocks[block_id].ref_cnt
        return self.manager.block_pool.get_block(block_id, "ref_cnt").ref_cnt

    def block_hash(self, block_id: int) -> bytes | None:
        blocks = self.manager.block_pool.blocks
        if block_id.__class__ is int and 0 <= block_id < len(blocks):
            key = blocks[block_id].block_hash
        else:
            key = self.manager.block_pool.get_block(block_id, "block_hash").block_hash
        if key is None:
            return None
        h = get_block_hash(key)
        return h if h.__class__ is bytes else bytes(h)

    def free_block_ids(self) -> list[int]:
        queue = self.manager.block_pool.free_block_queue
        return [b.block_id for b in queue.get_all_free_blocks()]

    def get_block_ids(self, request_id: str) -> list[int]:
        self._request(request_id, "get_block_ids")
        return self.manager.get_block_ids(request_id)

    def request_block_hashes(self, request_id: str) -> list[bytes]:
        return list(self._request(request_id, "request_block_hashes").block_hashes)

    def get_prefix_cache_stats(self) -> tuple[int, ...] | None:
        stats = self.manager.get_prefix_cache_stats()
        if stats is None:
            return None
        return tuple(map(int, _read_stats(stats)))

    def __repr__(self) -> str:
        m = self.manager
        return (
            f"ImplManager({type(m).__name__}, num_blocks={m.block_pool.num_gpu_blocks}, "
            f"block_size={m.block_size}, enable_caching={m.enable_caching}, "
            f"profile={m.profile!r})"
        )


def impl_manager_factory(
    num_blocks: int, block_size: int, *, enable_caching: bool = True, profile: str = "current"
) -> ImplManager:
    """Factory for kvspec's own manager (``--level manager --target impl``)."""
    return ImplManager(num_blocks, block_size, enable_caching=enable_caching, profile=profile)


impl_manager_factory.level = "manager"  # type: ignore[attr-defined]


def manager_factory_for(manager_cls: type[KVCacheManager]) -> ManagerFactory:
    """A factory driving ``manager_cls`` (a ``KVCacheManager`` subclass, such as a mutant)."""

    def factory(
        num_blocks: int, block_size: int, *, enable_caching: bool = True,
        profile: str = "current",
    ) -> ImplManager:
        return ImplManager(
            num_blocks, block_size, enable_caching=enable_caching, profile=profile,
            manager_cls=manager_cls,
        )

    factory.__name__ = factory.__qualname__ = f"manager_factory_for_{manager_cls.__name__}"
    factory.__doc__ = f"Factory for {manager_cls.__module__}.{manager_cls.__qualname__}."
    factory.level = "manager"  # type: ignore[attr-defined]
    return factory  # type: ignore[return-value]


def factory_level(factory: Callable[..., Any]) -> str:
    """``"manager"`` or ``"pool"``: which protocol ``factory``'s targets implement."""
    level = getattr(factory, "level", None)
    if level in ("pool", "manager"):
        return str(level)
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return "pool"
    return "manager" if "block_size" in params else "pool"


def load_manager_factory(target: str) -> ManagerFactory:
    """Resolve a ``--target`` string to a manager factory (see the module docstring)."""
    name = target.strip() if isinstance(target, str) else target
    factory = load_factory(BUILTIN_MANAGER_TARGETS.get(name, name))
    if factory_level(factory) != "manager":
        raise TargetSpecError(
            f"--target {target!r} builds pool targets; the manager level needs a factory "
            "(num_blocks, block_size, *, enable_caching, profile) returning a ManagerTarget"
        )
    return factory  # type: ignore[return-value]
