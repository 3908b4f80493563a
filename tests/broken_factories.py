"""Factories that cannot work, each in its own way: ``kvspec check --target
broken_factories:NAME`` must refuse every one in one line before the run starts."""

from __future__ import annotations

from kvspec.conformance.pool.targets import ImplPool


def raises(num_blocks: int, *, enable_caching: bool = True, profile: str = "current") -> None:
    raise RuntimeError("no allocator today")


def returns_none(num_blocks: int, *, enable_caching: bool = True,
                 profile: str = "current") -> None:
    return None


def takes_nothing() -> object:
    return object()


class HalfAPool:
    """Allocates, and nothing else."""

    def get_new_blocks(self, num_blocks: int) -> list[int]:
        return []


def half_a_pool(num_blocks: int, *, enable_caching: bool = True,
                profile: str = "current") -> HalfAPool:
    return HalfAPool()


def exits(num_blocks: int, *, enable_caching: bool = True, profile: str = "current") -> None:
    raise SystemExit(0)


class ExitsOnFork(ImplPool):
    """kvspec's pool, except that forking a block ends the process."""

    def fork_block(self, block_id: int) -> int:
        raise SystemExit(0)


def exits_on_fork(num_blocks: int, *, enable_caching: bool = True,
                  profile: str = "current") -> ExitsOnFork:
    return ExitsOnFork(num_blocks, enable_caching=enable_caching, profile=profile)
