"""The levels kvspec checks, by name. Each is imported only when asked for (the content
level needs torch)."""

from __future__ import annotations

import importlib
import inspect
from typing import Any

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


def check_factory(level: str, factory: Any, target: str, *, profile: str = "current") -> None:
    """Build one small target with ``factory`` before a run starts, so that a factory that
    cannot work is refused in one line (:class:`TargetSpecError`) instead of failing inside
    the run: one that cannot be called as the level calls it, raises (``SystemExit``
    included), returns ``None``, or returns an object lacking protocol methods (named).
    Operations the factory declares ``unsupported`` may be missing."""
    from kvspec.conformance.pool.targets import TargetSpecError, unsupported_operations

    unsupported: frozenset[str] = frozenset()
    args: tuple[Any, ...]
    if level == "manager":
        from kvspec.conformance.manager.protocol import ManagerTarget as protocol

        args = (4, 2)
    elif level == "hybrid":
        from kvspec.conformance.hybrid.protocol import HybridTarget as protocol

        args = (4, [("full", 2, None)])
    else:
        from kvspec.conformance.pool.protocol import PoolTarget as protocol

        args = (4,)
        unsupported = unsupported_operations(factory)
    kwargs = {"enable_caching": True, "profile": profile}
    call = f"factory({', '.join(map(repr, args))}, enable_caching=True, profile={profile!r})"
    where = f"--target {target!r}"
    try:
        inspect.signature(factory).bind(*args, **kwargs)
    except TypeError as exc:
        raise TargetSpecError(f"{where}: the factory cannot be called as {call}: {exc}") from None
    except ValueError:  # no signature to read (some builtins): the call below tells
        pass
    try:
        built = factory(*args, **kwargs)
    except KeyboardInterrupt:
        raise
    except ImportError as exc:  # a missing dependency: its message says which and how
        raise TargetSpecError(f"{where}: {_one_line(exc)}") from None
    except BaseException as exc:  # noqa: BLE001 - SystemExit too: never a silent exit 0
        raise TargetSpecError(
            f"{where}: {call} raised {type(exc).__name__}: {_one_line(exc)}") from None
    if built is None:
        raise TargetSpecError(f"{where}: {call} returned None; expected a {protocol.__name__}")
    methods = [name for name, value in vars(protocol).items()
               if not name.startswith("_") and callable(value)]
    missing = [m for m in methods if m not in unsupported and not callable(getattr(built, m, None))]
    if missing:
        raise TargetSpecError(
            f"{where}: {call} returned a {type(built).__name__}, which lacks the "
            f"{protocol.__name__} method(s) {', '.join(missing)}")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 300 else text[:297] + "..."
