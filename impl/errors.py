"""The exceptions kvspec's allocator raises for caller mistakes.

Upstream vLLM guards most of these paths with ``assert``, which vanishes under ``python -O``
and tells the caller nothing about which block was wrong. kvspec raises instead, from one
small hierarchy, and every message names the operation, the block id and what was expected.

Every refusal happens *before* any mutation: a caller that catches one of these finds the
pool exactly as it was. Each class also derives from the builtin that upstream raises (or
would raise) on the same path, so code written against upstream's ``ValueError`` keeps
working.
"""

from __future__ import annotations


class KVCacheError(Exception):
    """Base class of every error kvspec's allocator raises for a caller mistake."""


class InvalidArgumentError(KVCacheError, ValueError):
    """An argument is malformed: a negative count, an unknown profile, a short hash list."""


class NoFreeBlocksError(KVCacheError, ValueError):
    """More blocks were requested than the free queue holds.

    A ``ValueError`` because upstream's ``get_new_blocks`` and ``popleft`` raise one here, and
    the scheduler treats it as "cannot schedule", not as corruption.
    """


class InvalidBlockError(KVCacheError, ValueError):
    """A block id is out of range, the block belongs to another pool, or it is the null block
    where the operation does not allow it."""


class RefCountError(KVCacheError, ValueError):
    """The operation would drive a reference count below 0, or needs a referenced block and
    was given a free one."""


class CacheStateError(KVCacheError, ValueError):
    """A prefix-cache transition is not allowed: caching the null block, an unreferenced
    block or an already hashed block, or caching while prefix caching is disabled."""


class FreeQueueError(KVCacheError, RuntimeError):
    """The free queue was asked to unlink a block it does not hold, or found its links broken.

    A ``RuntimeError`` as upstream's ``FreeKVCacheBlockQueue.remove`` raises: reaching this
    from the pool means the pool's own bookkeeping is inconsistent.
    """
