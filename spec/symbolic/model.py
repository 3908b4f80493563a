"""The request-level world the model checker explores: configuration, hash chains, operations.

The pool spec (:mod:`kvspec.spec.pool`) knows blocks, not requests. Two invariants need requests:
``eviction-order`` is only true when callers free a table in reverse, and
``no-double-allocation`` is only interesting when blocks circulate between tables. So the
checker drives the pool the way ``KVCacheManager`` does: ``R`` requests, each with an
ordered block table of at most ``L`` entries, and a handful of *request operations*, each
of which is one or two pool calls. The explicit model (:mod:`kvspec.spec.symbolic.explicit`) and
the z3 encoding (:mod:`kvspec.spec.symbolic.encoding`) share this file, so they cannot disagree
about what the operations are.

Content hashes form a fixed tree, numbered like a binary heap: hash ``h`` (``1..H``) is
the chained hash of a block whose preceding block has hash ``h // 2``; hash 1 is the only
root (every prompt starts the same way). With ``H = 3``: ``1 <- 2`` and ``1 <- 3``, two
contents sharing a one-block prefix. A chained hash fixes its whole prefix, so "parent is
a function of the hash" is exactly upstream's chaining, without collisions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from kvspec.spec.invariants import INVARIANTS
from kvspec.spec.profiles import CURRENT, Profile


@dataclass(frozen=True)
class ModelConfig:
    """One finite instance of the pool model.

    ``num_blocks`` counts the null block (block 0), like ``num_gpu_blocks``.
    """

    num_blocks: int = 4
    num_requests: int = 2
    table_len: int = 3
    num_hashes: int = 3
    profile: Profile = CURRENT
    enable_caching: bool = True

    def __post_init__(self) -> None:
        if self.num_blocks < 2:
            raise ValueError(
                f"the model needs the null block and one usable block, got "
                f"num_blocks={self.num_blocks}"
            )
        for name in ("num_requests", "table_len", "num_hashes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")

    # ---------------------------------------------------------------- hash tree

    @property
    def hashes(self) -> range:
        return range(1, self.num_hashes + 1)

    @staticmethod
    def parent(h: int) -> int:
        """The hash of the preceding block; 0 for a chain's first block."""
        return h // 2

    def chain(self, h: int) -> tuple[int, ...]:
        """The hashes of a prompt's blocks up to and including ``h``, first block first."""
        out: list[int] = []
        while h:
            out.append(h)
            h = self.parent(h)
        return tuple(reversed(out))

    def depth(self, h: int) -> int:
        return len(self.chain(h))

    @staticmethod
    def hash_bytes(h: int) -> bytes:
        """The concrete content hash of ``h``: the chain spelled out, e.g. ``b"1.2.5"``."""
        parts: list[str] = []
        while h:
            parts.append(str(h))
            h //= 2
        return ".".join(reversed(parts)).encode()

    def hash_of_bytes(self, data: bytes | None) -> int:
        """Inverse of :meth:`hash_bytes` (``None`` -> 0)."""
        if data is None:
            return 0
        return int(data.decode().rsplit(".", 1)[-1])

    def describe(self) -> str:
        return (
            f"N={self.num_blocks} blocks (block 0 null), R={self.num_requests} requests, "
            f"L={self.table_len} table slots, H={self.num_hashes} hashes, "
            f"profile {self.profile.name}"
            + ("" if self.enable_caching else ", caching off")
        )


class Op(NamedTuple):
    """One request operation. ``arg`` is a hash (cache, hit) or a block id (stray_free)."""

    kind: str
    req: int = -1
    arg: int = 0

    def describe(self) -> str:
        if self.kind in ("cache", "hit"):
            return f"{self.kind}(r{self.req}, h{self.arg})"
        if self.kind == "stray_free":
            return f"stray_free(block {self.arg})"
        if self.kind == "fork_at":
            return f"fork_at(r{self.req}, slot {self.arg})"
        if self.kind == "reset":
            return "reset()"
        return f"{self.kind}(r{self.req})"


#: What each operation does, in pool calls (documentation, shown by ``kvspec prove``).
OP_MEANING: dict[str, str] = {
    "allocate": "get_new_blocks(1); append the block to the request's table",
    "allocate2": "get_new_blocks(2); append both blocks, in the order handed out",
    "free_tail": "free_blocks([last block]); the table drops it (a block it did not use)",
    "cache": "cache_block(next uncached block, h, parent) where parent(h) = the last cached hash",
    "hit": "get_cached_block per hash of h's chain, then touch them, into an empty table",
    "free": "free_blocks(table reversed); the table empties",
    "fork": "fork_block(last block); the copy replaces it in the table",
    "fork_at": (
        "fork_block(block at a slot before the last); the copy replaces it. A copy there "
        "leaves the chain discipline: eviction-order is not claimed from then on"
    ),
    "pad": "touch([null]); append the null block (a skipped position)",
    "reset": "reset_prefix_cache()",
    "stray_free": "free_blocks([b]) for a block no table holds (a caller's double free)",
}


def all_ops(cfg: ModelConfig) -> list[Op]:
    """Every operation instance, simplest first (so the first model found reads simply)."""
    ops: list[Op] = []
    caching = cfg.enable_caching
    for r in range(cfg.num_requests):
        ops.append(Op("allocate", r))
    for r in range(cfg.num_requests):
        ops.extend(Op("cache", r, h) for h in cfg.hashes if caching)
    for r in range(cfg.num_requests):
        ops.append(Op("free", r))
    for r in range(cfg.num_requests):
        ops.extend(Op("hit", r, h) for h in cfg.hashes
                   if caching and cfg.depth(h) <= cfg.table_len)
    if cfg.table_len >= 2:
        ops.extend(Op("allocate2", r) for r in range(cfg.num_requests))
    ops.extend(Op("free_tail", r) for r in range(cfg.num_requests))
    ops.extend(Op("fork_at", r, j) for r in range(cfg.num_requests)
               for j in range(cfg.table_len - 1))
    for r in range(cfg.num_requests):
        ops.append(Op("fork", r))
    for r in range(cfg.num_requests):
        ops.append(Op("pad", r))
    ops.append(Op("reset"))
    ops.extend(Op("stray_free", arg=b) for b in range(cfg.num_blocks))
    return ops


#: Invariants over requests (the pool invariants live in :mod:`kvspec.spec.invariants`).
REQUEST_INVARIANTS: dict[str, str] = {
    "table-references": (
        "a non-null block's ref count equals the table slots holding it (SEMANTICS I5)"
    ),
    "cached-prefix-chained": (
        "a table's cached prefix holds non-null blocks hashed with its chain (I8, I14)"
    ),
}


#: What the machines do (``kvspec check``'s pool harness and exhaustive vocabulary) that
#: this model leaves out, and why; ``kvspec prove`` prints it above every proof.
NOT_MODELLED: dict[str, str] = {
    "hits into a table that already holds blocks, or of part of a chain": (
        "a request adopts hits once, into an empty table (the manager refuses the rest); "
        "the machines' raw touch of any block is not modelled"
    ),
    "sharing a table's uncached blocks (touch of unhashed blocks)": (
        "not modelled: the auxiliary fact shared-blocks-hashed rests on it"
    ),
    "get_new_blocks(n) for n > 2": "n = 1 and n = 2 are modelled (allocate, allocate2)",
    "free_blocks of a table's middle, or of two tables in one call": (
        "a whole table (free) and its last block (free_tail) are modelled"
    ),
    "bad input other than a double free and out-of-table frees": (
        "a refusal changes nothing; the machines check that, the model does not"
    ),
    "evict_blocks": "not an operation of the spec's pool protocol",
}

#: The invariants whose statement assumes the callers' discipline (``assumes`` in
#: :data:`kvspec.spec.invariants.INVARIANTS`): proved only for sequences that keep it,
#: which every modelled operation does; the machines check them in the same scope.
DISCIPLINED: frozenset[str] = frozenset(
    name for name, inv in INVARIANTS.items() if inv.assumes is not None
)
