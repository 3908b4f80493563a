"""The mutant zoo is the harness's own test: every mutant is caught, and what is reported
about it is literally true (the trace is 1-minimal, and as short as the exhaustive
engine's shortest when that engine found it)."""

from __future__ import annotations

import pytest
from kvspec.conformance.commands.mutants import run_mutant
from kvspec.conformance.content.driver import CONTENT_CHECKS
from kvspec.conformance.levels import get_level
from kvspec.conformance.mutants import MUTANTS
from kvspec.conformance.mutants.store_zoo import ensure_registered
from minimality import assert_one_minimal

ensure_registered()


@pytest.mark.parametrize("name", list(MUTANTS))
def test_every_mutant_is_caught_with_a_one_minimal_trace_under_the_ci_profile(
    name: str,
) -> None:
    mutant = MUTANTS[name]
    row = run_mutant(name, "ci", seed=0)
    assert row.caught, f"mutant {name} survived the ci profile"
    result = row.result
    assert result is not None and result.failure is not None and result.minimal
    if mutant.level == "content":
        assert row.caught_by in CONTENT_CHECKS
    assert_one_minimal(get_level(mutant.level), mutant.factory, result.failure)
    if result.found_by == "exhaustive":
        # found breadth-first: the minimizer cannot shorten what was already shortest
        assert row.length == result.found_length


def test_the_zoo_has_mutants_where_random_runs_used_to_be_weak() -> None:
    """Several blocks under one hash, eviction of one of them, hits on evictable blocks,
    forks of cached blocks, extra keys that collide as strings."""
    assert {"evict-drops-every-copy", "evict-pops-wrong-copy", "touch-revives-in-place",
            "fork-copies-the-hash", "fork-uncaches-the-original", "free-queues-repeats-twice",
            "extra-keys-untagged", "free-keeps-cached-count"} <= set(MUTANTS)


def test_kvspec_mutants_in_worker_processes_prints_rows_in_the_zoo_order(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from kvspec.conformance.cli import main

    names = ["touch-leaves-in-queue", "forward-free", "null-returned-to-queue"]
    assert main(["mutants", "--jobs", "2", *names]) == 0
    out = capsys.readouterr().out
    first_words = [line.split()[0] for line in out.splitlines() if line.strip()]
    rows = [word for word in first_words if word in names]
    assert rows == names
    assert "3/3 mutants caught in" in out and "(2 worker processes)" in out


def test_content_mutants_share_one_worker_handed_out_first() -> None:
    from kvspec.conformance.commands.mutants import worker_groups

    assert worker_groups(["forward-free", "copy-only-k", "salt-ignored", "copy-wrong-direction"]
                         ) == [["copy-only-k", "copy-wrong-direction"], ["forward-free"],
                               ["salt-ignored"]]
    assert worker_groups(["forward-free"]) == [["forward-free"]]


def test_kvspec_mutants_refuses_zero_jobs(capsys: pytest.CaptureFixture[str]) -> None:
    from kvspec.conformance.cli import main

    assert main(["mutants", "--jobs", "0", "forward-free"]) == 2
    assert "--jobs 0, expected 1 or more" in capsys.readouterr().err
