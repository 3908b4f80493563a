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
