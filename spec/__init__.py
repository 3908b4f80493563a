"""kvspec's executable specification of the vLLM v1 KV-cache block pool.

Read in this order: :mod:`spec.profiles` (the named upstream behaviours),
:mod:`spec.pool` (state and one function per operation, guard then effect),
:mod:`spec.invariants` (named invariants over observable snapshots); then the request
level: :mod:`spec.hashing`, :mod:`spec.request`, :mod:`spec.manager`,
:mod:`spec.manager_invariants`; and the z3 model in :mod:`spec.symbolic`.
"""

from spec.errors import Refused
from spec.invariants import INVARIANTS, PoolSnapshot, check_all, snapshot
from spec.pool import NULL_BLOCK, PoolState, init_pool
from spec.profiles import CLASSIC, CURRENT, PROFILES, Profile, get_profile

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
