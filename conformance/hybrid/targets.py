"""Hybrid targets: adapters exposing a hybrid manager through :class:`HybridTarget`.

:class:`ImplHybrid` wraps kvspec's :class:`~kvspec.impl.coordinator.HybridKVCacheCoordinator`;
its ``coordinator_cls`` argument takes any subclass, which is how the hybrid mutants plug
in. :func:`load_hybrid_factory` turns a ``--target`` string into a factory: ``impl``,
``vllm`` (upstream's ``KVCacheManager`` with several groups), ``mutant:NAME`` or
``module.path:factory``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kvspec.conformance.hybrid.protocol import GroupTuple, HybridFactory
from kvspec.conformance.manager.protocol import RequestRegistry
from kvspec.conformance.pool.targets import TargetSpecError, load_factory
from kvspec.impl.coordinator import HybridKVCacheCoordinator
from kvspec.impl.request import Request

BUILTIN_HYBRID_TARGETS: dict[str, str] = {
    "impl": "kvspec.conformance.hybrid.targets:impl_hybrid_factory",
    "vllm": "kvspec.conformance.upstream.vllm_hybrid:vllm_hybrid_factory",
}


class ImplHybrid(RequestRegistry):
    """:class:`HybridTarget` over kvspec's hybrid coordinator; it keeps the requests (the
    scheduler's side) and resolves block ids to the pool's blocks."""

    def __init__(
        self, num_blocks: int, groups: Sequence[GroupTuple], *, enable_caching: bool = True,
        profile: str = "current",
        coordinator_cls: type[HybridKVCacheCoordinator] = HybridKVCacheCoordinator,
    ) -> None:
        self.coordinator = coordinator_cls(
            num_blocks, [bs for _k, bs, _w in groups], enable_caching=enable_caching,
            profile=profile, sliding_windows=[w for _k, _bs, w in groups],
        )
        self.requests: dict[str, Request] = {}

    def add_request(self, request_id: str, prompt_token_ids: Sequence[int]) -> None:
        self._require_new(request_id)
        self.requests[request_id] = Request(request_id, list(prompt_token_ids),
                                            block_hasher=self.coordinator.block_hasher)

    def get_computed_blocks(self, request_id: str) -> tuple[list[list[int]], int]:
        blocks, num = self.coordinator.get_computed_blocks(
            self._request(request_id, "get_computed_blocks"))
        return [[b.block_id for b in g] for g in blocks], num

    def allocate_slots(
        self, request_id: str, num_new_tokens: int, num_new_computed_tokens: int = 0,
        new_computed_blocks: Sequence[Sequence[int]] = (), num_lookahead_tokens: int = 0,
        num_external_computed_tokens: int = 0,
    ) -> list[list[int]] | None:
        request = self._request(request_id, "allocate_slots")
        pool = self.coordinator.block_pool
        hits = ([pool.get_blocks(g, "allocate_slots") for g in new_computed_blocks]
                if new_computed_blocks else None)
        new = self.coordinator.allocate_slots(
            request, num_new_tokens, num_new_computed_tokens, hits, num_lookahead_tokens,
            num_external_computed_tokens)
        return None if new is None else [[b.block_id for b in g] for g in new]

    def free(self, request_id: str) -> None:
        self.coordinator.free(self._request(request_id, "free"))

    def preempt(self, request_id: str) -> None:
        request = self._request(request_id, "preempt")
        self.coordinator.free(request)
        request.num_computed_tokens = 0
        request.num_preemptions += 1

    def reset_prefix_cache(self) -> bool:
        return self.coordinator.reset_prefix_cache()

    def get_usage(self) -> float:
        return self.coordinator.usage

    def get_num_free_blocks(self) -> int:
        return self.coordinator.block_pool.get_num_free_blocks()

    def ref_cnt(self, block_id: int) -> int:
        return self.coordinator.block_pool.get_block(block_id, "ref_cnt").ref_cnt

    def block_hash(self, block_id: int) -> bytes | None:
        key = self.coordinator.block_pool.get_block(block_id, "block_hash").block_hash
        return None if key is None else bytes(key)

    def free_block_ids(self) -> list[int]:
        return [b.block_id for b in
                self.coordinator.block_pool.free_block_queue.get_all_free_blocks()]

    def get_block_ids(self, request_id: str) -> list[list[int]]:
        self._request(request_id, "get_block_ids")
        return [list(t) for t in self.coordinator.get_block_ids(request_id)]

    def request_block_hashes(self, request_id: str) -> list[bytes]:
        return [bytes(h) for h in
                self._request(request_id, "request_block_hashes").block_hashes]

    def __repr__(self) -> str:
        c = self.coordinator
        return (f"ImplHybrid({type(c).__name__}, groups "
                f"{[(g.block_size, g.sliding_window) for g in c.groups]})")


def impl_hybrid_factory(
    num_blocks: int, groups: Sequence[GroupTuple], *, enable_caching: bool = True,
    profile: str = "current",
) -> ImplHybrid:
    """Factory for kvspec's own hybrid coordinator (``--level hybrid --target impl``)."""
    return ImplHybrid(num_blocks, groups, enable_caching=enable_caching, profile=profile)


impl_hybrid_factory.level = "hybrid"  # type: ignore[attr-defined]


def hybrid_factory_for(coordinator_cls: type[HybridKVCacheCoordinator]) -> HybridFactory:
    """A factory driving ``coordinator_cls`` (a subclass, such as a mutant)."""

    def factory(num_blocks: int, groups: Sequence[GroupTuple], *, enable_caching: bool = True,
                profile: str = "current") -> ImplHybrid:
        return ImplHybrid(num_blocks, groups, enable_caching=enable_caching, profile=profile,
                          coordinator_cls=coordinator_cls)

    factory.__name__ = factory.__qualname__ = f"hybrid_factory_for_{coordinator_cls.__name__}"
    factory.level = "hybrid"  # type: ignore[attr-defined]
    return factory  # type: ignore[return-value]


def load_hybrid_factory(target: str) -> Any:
    """Resolve a ``--target`` string to a hybrid factory."""
    name = target.strip() if isinstance(target, str) else target
    factory = load_factory(BUILTIN_HYBRID_TARGETS.get(name, name))
    level = getattr(factory, "level", None)
    if level not in (None, "hybrid"):
        raise TargetSpecError(f"--target {target!r} is a {level}-level factory; the hybrid "
                              "level needs one taking (num_blocks, groups, ...)")
    return factory
