"""kvspec's executable specification of the vLLM v1 KV-cache block pool.

Read in this order: :mod:`kvspec.spec.profiles` (the named upstream behaviours),
:mod:`kvspec.spec.pool` (state and one function per operation, guard then effect),
:mod:`kvspec.spec.invariants` (named invariants over observable snapshots); then the request
level: :mod:`kvspec.spec.hashing`, :mod:`kvspec.spec.request`, :mod:`kvspec.spec.manager`,
:mod:`kvspec.spec.manager_invariants`; and the z3 model in :mod:`kvspec.spec.symbolic`.
"""

from kvspec.spec.errors import Refused
from kvspec.spec.invariants import INVARIANTS, PoolSnapshot, check_all, snapshot
from kvspec.spec.pool import NULL_BLOCK, PoolState, init_pool
from kvspec.spec.profiles import CLASSIC, CURRENT, PROFILES, Profile, get_profile

__all__ = [
    "CLASSIC",
    "CURRENT",
    "INVARIANTS",
    "NULL_BLOCK",
    "PROFILES",
    "PoolSnapshot",
    "PoolState",
    "Profile",
    "Refused",
    "check_all",
    "get_profile",
    "init_pool",
    "snapshot",
]
