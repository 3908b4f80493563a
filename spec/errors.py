"""Refusals: the operations a correct pool must reject.

Each precondition in the spec names the refusal a correct pool raises. The conformance
suite does not care which exception class a target uses, only that it refuses and that
every observation is unchanged afterwards; the names make failure reports readable.
"""

from __future__ import annotations


class Refused(Exception):
    """The spec refuses an operation. ``reason`` is a short stable name for the rule."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


# The reasons, one per precondition (see spec/pool.py).
NOT_ENOUGH_FREE_BLOCKS = "not-enough-free-blocks"
NEGATIVE_COUNT = "negative-count"
BLOCK_OUT_OF_RANGE = "block-out-of-range"
REF_COUNT_BELOW_ZERO = "ref-count-below-zero"
CACHING_DISABLED = "caching-disabled"
CACHE_NULL_BLOCK = "cache-null-block"
CACHE_UNREFERENCED_BLOCK = "cache-unreferenced-block"
CACHE_HASHED_BLOCK = "cache-hashed-block"
FORK_NULL_BLOCK = "fork-null-block"
FORK_FREE_BLOCK = "fork-free-block"
CHOICE_NOT_ALLOWED = "choice-not-allowed"
