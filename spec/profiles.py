"""Profiles: the named upstream behaviours the spec can mirror.

Upstream changed observable pool behaviour between releases without naming the change.
kvspec names it. A profile is a set of parameters of the one spec, never a second copy of
it: every rule that differs reads its profile flag in one place.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Profile:
    """One named behaviour of the block pool."""

    name: str
    summary: str
    #: ``free_blocks`` sends unhashed blocks to the *front* of the free queue. They can
    #: never be a prefix hit, so reusing them first keeps cached blocks alive longer.
    prepend_unhashed_on_free: bool
    #: ``touch`` and ``free_blocks`` adjust the null block's ref count (it drifts and may
    #: go negative). Later releases skip the null block entirely, keeping it at 0.
    count_null_refs: bool
    #: Extra hash keys carry their kind (``("lora", ...)``, ``("cache_salt", ...)``), so
    #: a LoRA name and a cache salt spelt alike can never collide.
    tag_extra_keys: bool
    #: ``allocate_slots`` accepts zero new tokens when it only adopts computed hits.
    allow_adopt_only_allocation: bool


CURRENT = Profile(
    name="current",
    summary="vLLM >= 0.24 (checked against 0.33.0): unhashed frees prepended, null skipped",
    prepend_unhashed_on_free=True,
    count_null_refs=False,
    tag_extra_keys=True,
    allow_adopt_only_allocation=True,
)

CLASSIC = Profile(
    name="classic",
    summary="vLLM 0.22.x (the study sheet's line numbers): every free appended, null counted",
    prepend_unhashed_on_free=False,
    count_null_refs=True,
    tag_extra_keys=False,
    allow_adopt_only_allocation=False,
)

PROFILES: dict[str, Profile] = {p.name: p for p in (CURRENT, CLASSIC)}


def get_profile(name: str) -> Profile:
    """The profile called ``name``; a clear error names the valid ones."""
    try:
        return PROFILES[name]
    except KeyError:
        valid = ", ".join(sorted(PROFILES))
        raise ValueError(f"unknown profile {name!r}; expected one of: {valid}") from None
