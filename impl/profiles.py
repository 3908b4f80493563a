"""Named behaviour profiles of the block pool.

Upstream changed observable pool behaviour between releases without naming the change.
kvspec names each variant, so a target, the spec and a trace all say which one they mean.
Only pool-level flags live here; each is read once at construction into a plain attribute,
so the hot paths test a bool, not a dict.

``current``
    vLLM >= 0.24, checked against 0.33.0. ``free_blocks`` prepends newly free unhashed blocks
    (all of them when caching is off) and appends hashed ones; ``touch`` and ``free_blocks``
    skip the null block.
``classic``
    vLLM 0.22.x. ``free_blocks`` appends every newly free block; ``touch`` increments the
    null block's ``ref_cnt`` and ``free_blocks`` decrements it (it may go negative; the null
    block is never queued either way).
"""

from __future__ import annotations

from dataclasses import dataclass

from kvspec.impl.errors import InvalidArgumentError


@dataclass(frozen=True, slots=True)
class PoolProfile:
    """The pool-level behaviour switches that distinguish one upstream version from another."""

    name: str
    #: ``touch`` leaves the null block alone (``current``) instead of counting it (``classic``).
    skip_null_in_touch: bool
    #: ``free_blocks`` leaves the null block alone instead of decrementing it.
    skip_null_in_free: bool
    #: ``free_blocks`` sends unhashed blocks to the front (reused first, they can never hit).
    prepend_unhashed_on_free: bool
    description: str


CURRENT = PoolProfile(
    name="current",
    skip_null_in_touch=True,
    skip_null_in_free=True,
    prepend_unhashed_on_free=True,
    description="vLLM >= 0.24 semantics, checked against vLLM 0.33.0",
)
CLASSIC = PoolProfile(
    name="classic",
    skip_null_in_touch=False,
    skip_null_in_free=False,
    prepend_unhashed_on_free=False,
    description="vLLM 0.22.x semantics (the study sheet's line numbers)",
)

PROFILES: dict[str, PoolProfile] = {p.name: p for p in (CURRENT, CLASSIC)}
DEFAULT_PROFILE = CURRENT.name


def resolve_profile(profile: str | PoolProfile) -> PoolProfile:
    """Return the :class:`PoolProfile` named ``profile`` (a profile passes through)."""
    if isinstance(profile, PoolProfile):
        return profile
    try:
        return PROFILES[profile]
    except (KeyError, TypeError):
        valid = ", ".join(repr(name) for name in PROFILES)
        raise InvalidArgumentError(
            f"BlockPool: unknown profile {profile!r}; expected one of {valid}"
        ) from None
