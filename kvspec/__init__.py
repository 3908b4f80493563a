"""kvspec: an executable formal model of a PagedAttention KV-cache block pool.

Everything installs under this one package, so nothing of kvspec's shadows a user's own
``spec``, ``impl`` or ``benchmarks`` folder:

``kvspec.spec``         the executable specification (and its z3 model, ``kvspec.spec.symbolic``)
``kvspec.impl``         kvspec's allocator, manager and block store
``kvspec.conformance``  the protocols targets implement, the engines that check them, the CLI
``kvspec.benchmarks``   ``kvspec bench``

In the repository these are the top-level folders ``spec/``, ``impl/``, ``conformance/`` and
``benchmarks/``; ``pyproject.toml`` maps them under this package.
"""

__version__ = "0.1.0"

# The public API, imported on first use (PEP 562) so that ``import kvspec`` and the
# ``kvspec`` command stay fast: name -> the module that defines it.
_PUBLIC: dict[str, str] = {
    "PoolTarget": "kvspec.conformance.pool.protocol",
    "ManagerTarget": "kvspec.conformance.manager.protocol",
    "impl_pool_factory": "kvspec.conformance.pool.targets",
    "impl_manager_factory": "kvspec.conformance.manager.targets",
    "run_check": "kvspec.conformance.engines.pipeline",
    "replay_trace": "kvspec.conformance.engines.replay",
    "Trace": "kvspec.conformance.trace",
    "Step": "kvspec.conformance.trace",
    "conformance": "kvspec.conformance.api",
    "pool_conformance": "kvspec.conformance.api",
    "manager_conformance": "kvspec.conformance.api",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> object:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'kvspec' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
