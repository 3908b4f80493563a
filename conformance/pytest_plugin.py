"""The kvspec pytest plugin: ``pytest --kvspec-target mypkg.pools:factory`` checks an
allocator inside the user's own test run.

Registered through the ``pytest11`` entry point, so installing kvspec is enough. Without
``--kvspec-target`` it does nothing (and imports nothing heavy). With it, the run gains one
test class per level, named ``kvspec[LEVEL-PROFILE-MODE]``, holding the tests
:func:`kvspec.conformance.api.conformance` builds (``test_exhaustive``, ``test_random``).
The items are made in a fixed order from the options alone, so their ids are the same in
every run and in every pytest-xdist worker (xdist requires that of every worker's
collection).

``--kvspec-db DIR`` loads a Hypothesis settings profile whose example database is ``DIR``
(on top of the profile already loaded, and random even under Hypothesis's CI profile), for
runs that share examples through a shared folder; ``--kvspec-replay`` one that only
replays what the database holds; ``--kvspec-only`` collects nothing else (``kvspec fuzz``
uses all three).
"""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any

import pytest

LEVELS = ("pool", "manager", "content", "hybrid", "all")
RUN_PROFILE = "kvspec-run"
"""The Hypothesis profile --kvspec-db and --kvspec-replay load, on top of the loaded one."""


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kvspec", "kvspec conformance of a KV-cache allocator")
    group.addoption("--kvspec-target", default=None, metavar="TARGET",
                    help="check this allocator: impl, vllm, mutant:NAME or module.path:factory")
    group.addoption("--kvspec-level", default="all", choices=LEVELS,
                    help="level to check (default all: every level the target has)")
    group.addoption("--kvspec-mode", default="strict", choices=("strict", "abstract"),
                    help="strict: same ids and queue order as the spec; abstract: any allowed "
                    "choice (the manager level runs strict)")
    group.addoption("--kvspec-profile", default="current", choices=("current", "classic"),
                    help="the upstream behaviour the spec follows")
    group.addoption("--kvspec-out", default=None, type=Path, metavar="DIR",
                    help="where failure traces and pytest functions go (.kvspec/traces)")
    group.addoption("--kvspec-db", default=None, type=Path, metavar="DIR",
                    help="Hypothesis example database folder for this run (shared with "
                    "other workers or hosts)")
    group.addoption("--kvspec-only", action="store_true",
                    help="collect only the kvspec conformance tests")
    group.addoption("--kvspec-replay", action="store_true",
                    help="generate nothing: only replay the examples saved in the database")


def _target(config: pytest.Config) -> str | None:
    return config.getoption("kvspec_target", None)


@pytest.hookimpl(trylast=True)  # after Hypothesis's plugin has loaded --hypothesis-profile
def pytest_configure(config: pytest.Config) -> None:
    db = config.getoption("kvspec_db", None)
    replay = config.getoption("kvspec_replay", False)
    if db is not None or replay:
        from hypothesis import Phase, settings
        from hypothesis.database import DirectoryBasedExampleDatabase

        changes: dict[str, Any] = {}
        if db is not None:
            # Hypothesis's own CI profile (loaded when $CI is set) derandomizes and drops the
            # database; a run that asks for a database wants examples saved and varied, and
            # HypoFuzz refuses derandomized tests.
            changes["database"] = DirectoryBasedExampleDatabase(str(db))
            changes["derandomize"] = False
        if replay:
            changes["phases"] = [Phase.explicit, Phase.reuse]
        settings.register_profile(RUN_PROFILE, parent=settings.default, **changes)
        settings.load_profile(RUN_PROFILE)
    target = _target(config)
    if target is not None:
        config.stash[_CLASSES] = _conformance_classes(config, target)


def _conformance_classes(config: pytest.Config, target: str) -> dict[str, type]:
    """Every test class the options ask for, by name; a bad option stops the run with one
    line naming it."""
    from kvspec.conformance.api import conformance
    from kvspec.conformance.commands.check import levels_to_run
    from kvspec.conformance.pool.targets import TargetSpecError
    from kvspec.conformance.report import DEFAULT_TRACE_DIR

    level = config.getoption("kvspec_level")
    mode = config.getoption("kvspec_mode")
    profile = config.getoption("kvspec_profile")
    out = config.getoption("kvspec_out") or DEFAULT_TRACE_DIR
    try:
        levels, _notes = levels_to_run(target, level)
        classes = {}
        for lv in levels:
            lv_mode = "strict" if lv == "manager" and level == "all" else mode
            name = f"{lv}[{profile}-{lv_mode}]"
            classes[name] = conformance(target, level=lv, profile=profile, mode=lv_mode,
                                        out=out)
    except (TargetSpecError, ValueError) as exc:
        message = str(exc).replace("--target", "--kvspec-target", 1)
        if not message.startswith("--kvspec-target"):
            message = f"--kvspec-target {target!r}: {message}"
        raise pytest.UsageError(message) from None
    return classes


_CLASSES = pytest.StashKey[dict[str, type]]()


class ConformanceModule(pytest.Module):
    """The test classes the options build, as a module found in no file (pytest collects
    classes only inside a module)."""

    def _getobj(self) -> types.ModuleType:
        module = types.ModuleType("kvspec.conformance.tests")
        vars(module).update(self.config.stash[_CLASSES])
        return module

    def collect(self) -> list[pytest.Class]:
        return [pytest.Class.from_parent(self, name=name) for name in self.config.stash[_CLASSES]]


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    if config.getoption("kvspec_only", False) and _target(config) is not None:
        return True
    return None


@pytest.hookimpl(tryfirst=True)  # before -k and -m deselect
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config,
                                  items: list[pytest.Item]) -> None:
    if not config.stash.get(_CLASSES, {}):
        return
    module = ConformanceModule.from_parent(session, path=config.rootpath / "kvspec",
                                           nodeid="kvspec")
    found = [item for cls in module.collect() for item in cls.collect()]
    # Reported like any collected module, so that "collected N items" counts them.
    config.hook.pytest_collectreport(report=pytest.CollectReport(
        module.nodeid, "passed", None, found))
    items.extend(found)
