"""The levels kvspec checks, by name. Each is imported only when asked for (the content
level needs torch)."""

from __future__ import annotations

import importlib

from kvspec.conformance.level import Level

LEVEL_MODULES: dict[str, str] = {
    "pool": "kvspec.conformance.pool.level:POOL",
    "manager": "kvspec.conformance.manager.level:MANAGER",
    "content": "kvspec.conformance.content.level:CONTENT",
    "hybrid": "kvspec.conformance.hybrid.level:HYBRID",
}
LEVEL_NAMES = tuple(LEVEL_MODULES)


def get_level(name: str) -> Level:
    """The level called ``name``."""
    if name not in LEVEL_MODULES:
        raise ValueError(f"unknown level {name!r}; expected one of {', '.join(LEVEL_NAMES)}")
    module, _, attr = LEVEL_MODULES[name].partition(":")
    return getattr(importlib.import_module(module), attr)
