"""The bad-input report: what a target does with operations the spec refuses."""

from __future__ import annotations

from kvspec.conformance.mutants import MUTANTS
from kvspec.conformance.pool.bad_input import PROBES, format_report, probe, probe_all
from kvspec.conformance.pool.targets import impl_pool_factory


def test_kvspecs_allocator_refuses_every_probe_and_changes_nothing() -> None:
    results = probe_all(impl_pool_factory)
    assert [r.name for r in results] == list(PROBES)
    assert all(r.ok for r in results), format_report(results)


def test_a_target_that_trusts_its_caller_is_reported_with_the_damage_done() -> None:
    result = probe(MUTANTS["free-of-ref0-goes-negative"].factory, "free_unreferenced")
    assert result.outcome == "accepted"
    assert result.changed["ref_cnt"][1][5] == -1
    assert "ref-nonnegative" in result.broken
    assert "accepted silently: free_unreferenced" in format_report([result])


def test_unsupported_operations_are_reported_as_such() -> None:
    def factory(num_blocks, *, enable_caching=True, profile="current"):  # type: ignore[no-untyped-def]
        return impl_pool_factory(num_blocks, enable_caching=enable_caching, profile=profile)

    factory.unsupported = frozenset({"fork_block"})  # type: ignore[attr-defined]
    assert probe(factory, "fork_null_block").outcome == "not supported"
