"""Long campaigns: several processes, one example database. What one process finds, the
next replays first; ``kvspec fuzz`` runs HypoFuzz over the plugin's tests and reports what
it found as ``kvspec check`` does."""

from __future__ import annotations

import json

import pytest
from kvspec.conformance import fuzz
from kvspec.conformance.cli import main
from test_plugin import USER_POOLS

pytest_plugins = ["pytester"]


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    pytester.makepyfile(mypools=USER_POOLS)
    monkeypatch.setenv("KVSPEC_SETTINGS", "dev")
    return pytester


def run(project: pytest.Pytester, *args: str) -> pytest.RunResult:
    return project.runpytest_subprocess("-p", "no:cacheprovider", *args)


def test_a_failure_saved_by_one_worker_is_replayed_first_by_the_other(project):
    """Two worker processes share one database folder. The second is only allowed to
    replay (``--kvspec-replay``: no new examples), so its failure is the first one's."""
    shared = ["--kvspec-target", "mypools:buggy_factory", "--kvspec-level", "pool",
              "-k", "test_random", "--kvspec-db", "shared-db"]
    first = run(project, *shared, "--kvspec-out", ".kvspec/first")
    first.assert_outcomes(failed=1, deselected=1)
    second = run(project, *shared, "--kvspec-replay", "--kvspec-out", ".kvspec/second")
    second.assert_outcomes(failed=1, deselected=1)
    name = "random/mypools_buggy_factory-free_queue.json"
    found = json.loads((project.path / ".kvspec/first" / name).read_text())
    replayed = json.loads((project.path / ".kvspec/second" / name).read_text())
    assert found["steps"] == replayed["steps"]
    # Without the shared database, replaying alone finds nothing to fail on.
    alone = run(project, *shared[:-1], "empty-db", "--kvspec-replay")
    assert alone.parseoutcomes().get("failed", 0) == 0


def test_kvspec_fuzz_refuses_a_bad_target_in_one_line(capsys):
    assert main(["fuzz", "--target", "nopkg:factory", "--minutes", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kvspec fuzz: --target 'nopkg:factory': cannot import module")
    assert err.count("\n") == 1


def test_kvspec_fuzz_without_hypofuzz_says_how_to_install_it(capsys, monkeypatch):
    monkeypatch.setattr(fuzz, "hypofuzz_installed", lambda: False)
    assert main(["fuzz", "--target", "impl", "--minutes", "1"]) == 2
    assert capsys.readouterr().err == fuzz.HYPOFUZZ_MISSING + "\n"


@pytest.mark.skipif(not fuzz.hypofuzz_installed(),
                    reason="HypoFuzz is not installed (pip install 'kvspec[fuzz]')")
def test_a_hypofuzz_campaign_saves_its_failure_and_reports_it_minimized(project):
    result = project.run("kvspec", "fuzz", "--target", "mypools:buggy_factory", "--level",
                         "pool", "--workers", "2", "--minutes", "0.25", "--db", "campaign-db",
                         timeout=120)
    assert result.ret == 1, result.stdout.str()
    result.stdout.fnmatch_lines([
        "kvspec fuzz: mypools:buggy_factory, levels pool, 2 workers, 0.25 min, example "
        "database campaign-db",
        "using 2 processes to fuzz 1 test",
        "kvspec fuzz: stopped after 15s; replaying the example database campaign-db",
        "FAIL (found by the random engine, * before minimizing)",
        "caught by: free_queue",
        "trace:  .kvspec/traces/random/mypools_buggy_factory-free_queue.json*",
    ])
    # What HypoFuzz saved is what any later run of the plugin replays first.
    later = run(project, "--kvspec-target", "mypools:buggy_factory", "--kvspec-level", "pool",
                "-k", "test_random", "--kvspec-db", "campaign-db", "--kvspec-replay")
    later.assert_outcomes(failed=1, deselected=1)
