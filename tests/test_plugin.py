"""The pytest plugin and the test-class builder, run as a user runs them: pytest in a
subprocess, on a small project of the user's own with a correct and a buggy allocator."""

from __future__ import annotations

import pytest
from kvspec.conformance.engines.replay import replay_trace
from kvspec.conformance.trace import Trace

pytest_plugins = ["pytester"]

#: The user's project: a correct pool and one that frees blocks in forward order.
USER_POOLS = '''
from kvspec.conformance.pool.targets import ImplPool


class ForwardFreePool(ImplPool):
    """Frees a table head first, so the tail is evicted last: the wrong order."""

    def free_blocks(self, block_ids):
        super().free_blocks(list(reversed(block_ids)))


def factory(num_blocks, *, enable_caching=True, profile="current"):
    return ImplPool(num_blocks, enable_caching=enable_caching, profile=profile)


def buggy_factory(num_blocks, *, enable_caching=True, profile="current"):
    return ForwardFreePool(num_blocks, enable_caching=enable_caching, profile=profile)
'''

#: The user's Hypothesis profile for targets that pass: few examples (these tests show the
#: plugin's plumbing; the engines have their own tests).
USER_CONFTEST = '''
from hypothesis import settings

settings.register_profile("few", max_examples=8, stateful_step_count=12)
'''
FEW = ("--hypothesis-profile", "few")
# Failing runs use Hypothesis's default profile, which finds the buggy pool's bug in its
# first few examples (40 runs of 40). Not --hypothesis-seed: a forced seed turns the example
# database off.


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    pytester.makepyfile(mypools=USER_POOLS)
    pytester.makeconftest(USER_CONFTEST)
    monkeypatch.setenv("KVSPEC_SETTINGS", "dev")
    return pytester


def run(project: pytest.Pytester, *args: str) -> pytest.RunResult:
    return project.runpytest_subprocess("-p", "no:cacheprovider", *args)


def test_a_conforming_target_passes_as_one_test_per_engine_and_level(project):
    result = run(project, "--kvspec-target", "mypools:factory", "--kvspec-level", "pool",
                 "-v", *FEW)
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines([
        "kvspec::pool[[]current-strict[]]::test_exhaustive PASSED*",
        "kvspec::pool[[]current-strict[]]::test_random PASSED*",
    ])


def test_a_failure_shows_the_minimal_sequence_and_writes_a_trace_that_replays(project):
    result = run(project, "--kvspec-target", "mypools:buggy_factory")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines([
        "FAIL (found by the exhaustive engine, 2 steps before minimizing)",
        "caught by: free_queue",
        "sequence, 1-minimal, shortest in the exhaustive search (2 steps, pool level, *",
        "    1. get_new_blocks(num_blocks=2)",
        "    2. free_blocks(block_ids=[[]1, 2[]])  <-- diverges here",
        " ! free_queue       spec:   [[]1, 2[]]",
        "                    target: [[]2, 1[]]",
        "trace:  .kvspec/traces/exhaustive/mypools_buggy_factory-free_queue.json*",
        "FAIL (found by the random engine, * before minimizing)",
        "caught by: free_queue",
        "sequence, 1-minimal (* steps, pool level, *",
        "  * free_blocks(block_ids=*)  <-- diverges here",
        "trace:  .kvspec/traces/random/mypools_buggy_factory-free_queue.json*",
    ])
    for engine in ("exhaustive", "random"):
        trace = Trace.load(project.path / f".kvspec/traces/{engine}/"
                           "mypools_buggy_factory-free_queue.json")
        assert not replay_trace(trace, "mutant:forward-free").ok
        assert replay_trace(trace, "impl").ok


@pytest.mark.parametrize(
    ("target", "line"),
    [
        ("mypools", "ERROR: --kvspec-target 'mypools': expected 'impl', 'vllm' or "
                    "'module.path:factory'*"),
        ("nopkg:factory", "ERROR: --kvspec-target 'nopkg:factory': cannot import module "
                          "'nopkg': No module named 'nopkg'"),
    ],
)
def test_a_bad_target_string_stops_the_run_with_one_line(project, target, line):
    result = project.runpytest_inprocess("--kvspec-target", target)  # it stops at once
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = [x for x in result.stderr.lines if x.strip()]
    assert len(errors) == 1, result.stderr.str()
    result.stderr.fnmatch_lines([line])


def test_a_mode_the_level_does_not_run_is_refused_by_name(project):
    result = project.runpytest_inprocess("--kvspec-target", "impl", "--kvspec-level",
                                         "manager", "--kvspec-mode", "abstract")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --kvspec-target 'impl': the manager level runs in "
                                 "strict mode, not 'abstract'"])


def test_the_class_builder_is_the_whole_test_file(project):
    project.makepyfile(test_pools='''
        from kvspec import pool_conformance

        TestMyPool = pool_conformance("mypools:factory", mode="abstract")
    ''')
    result = run(project, "-v", *FEW)
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines([
        "test_pools.py::TestMyPool::test_exhaustive PASSED*",
        "test_pools.py::TestMyPool::test_random PASSED*",
    ])


def test_the_hypothesis_settings_profile_is_honoured(project):
    result = run(project, "--kvspec-target", "mypools:factory", "--kvspec-level", "pool",
                 "-k", "test_random", "--hypothesis-show-statistics", *FEW)
    result.assert_outcomes(passed=1, deselected=1)
    result.stdout.fnmatch_lines(["*Stopped because settings.max_examples=8*"])


def test_ids_and_outcomes_are_the_same_under_xdist(project):
    args = ("--kvspec-target", "mypools:buggy_factory", "--kvspec-level", "pool")
    serial = run(project, *args, "--collect-only", "-q")
    parallel = run(project, *args, "-n", "2", "-v")
    ids = [x for x in serial.stdout.lines if x.startswith("kvspec::")]
    assert ids == ["kvspec::pool[current-strict]::test_exhaustive",
                   "kvspec::pool[current-strict]::test_random"]
    parallel.assert_outcomes(failed=2)
    for node_id in ids:
        parallel.stdout.fnmatch_lines([f"*FAILED {node_id.replace('[', '[[]')}*"])


def test_without_a_target_the_plugin_adds_nothing(project):
    project.makepyfile(test_plain="def test_plain():\n    assert True\n")
    result = project.runpytest_inprocess("-v")
    result.assert_outcomes(passed=1)
    assert "kvspec::" not in result.stdout.str()


def test_kvspec_check_replays_what_the_plugin_saved(pytester: pytest.Pytester) -> None:
    """One example database for both: a failure the plugin saved is the first thing
    kvspec check runs (same keys), found at its first example."""
    db = pytester.path / "db"
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-n", "0", "--kvspec-target", "mutant:evict-pops-wrong-copy",
        "--kvspec-level", "pool", "--kvspec-only", "--kvspec-db", str(db), "-k", "random")
    result.assert_outcomes(failed=1)
    from kvspec.conformance.engines.pipeline import run_check
    from kvspec.conformance.mutants import MUTANTS

    check = run_check(MUTANTS["evict-pops-wrong-copy"].factory,
                      target_name="mutant:evict-pops-wrong-copy", level="pool",
                      settings_name="ci", max_examples=1, database=db, progress=False,
                      exhaustive=False)
    assert check.failure is not None and check.examples_to_failure == 1


def test_a_database_run_is_random_even_under_hypothesis_ci_profile(project, monkeypatch):
    """Hypothesis loads its derandomizing CI profile where $CI is set; a run given a database
    (as every kvspec fuzz campaign is) must still vary its examples, or HypoFuzz skips it."""
    monkeypatch.setenv("CI", "true")
    project.makepyfile(test_profile=(
        "from hypothesis import settings\n\n"
        "def test_loaded_profile():\n"
        "    assert settings.default.derandomize is False\n"
        "    assert settings.default.database is not None\n"))
    assert run(project, "-n", "0").ret == 1  # the CI profile alone derandomizes
    run(project, "-n", "0", "--kvspec-db", "db").assert_outcomes(passed=1)


def test_the_hybrid_level_is_collected_when_named(project):
    result = run(project, "--kvspec-target", "impl", "--kvspec-level", "hybrid",
                 "--kvspec-only", "--collect-only", "-q")
    assert [x for x in result.stdout.lines if x.startswith("kvspec::")] == [
        "kvspec::hybrid[current-strict]::test_exhaustive",
        "kvspec::hybrid[current-strict]::test_random"]
