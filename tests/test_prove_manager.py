"""``kvspec prove --level manager``: the hit cap proved for an instance, and the shortest
trace by which a manager that does not cap hits breaks it, replayed on real managers."""

from __future__ import annotations

from kvspec.conformance.cli import main as kvspec
from kvspec.conformance.engines.replay import replay_trace
from kvspec.conformance.trace import Trace
from kvspec.spec import manager as sm
from kvspec.spec.symbolic import manager_encoding as me
from kvspec.spec.symbolic.manager_model import (
    ManagerModelConfig,
    semantics,
    shortest_violation,
)


def test_the_hit_cap_and_table_coverage_are_proved_by_induction(capsys, tmp_path):
    assert kvspec(["prove", "--level", "manager", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for name in ("hit-cap", "table-covers-computed"):
        assert (f"{name}" in out and "proved by induction for N=4, R=2, B=2, T=4 (8-bit), "
                "abstraction cross-checked against spec" in out)
    assert out.count("proved by induction") == 2
    assert "operations first admitted at depth: admit@0, reset@0, decode@1, free@1" in out
    assert list(tmp_path.iterdir()) == []


def test_hits_not_capped_gets_the_shortest_trace_which_replays_on_real_managers(
    capsys, tmp_path
):
    code = kvspec(["prove", "--level", "manager", "--mutant", "hits-not-capped",
                   "--out", str(tmp_path)])
    assert code == 0
    out = capsys.readouterr().out
    assert "hit-cap                counterexample of length 2" in out
    cfg = ManagerModelConfig()
    assert shortest_violation(cfg, semantics("hits-not-capped"), 4) == 2  # breadth first
    (path,) = tmp_path.iterdir()
    trace = Trace.load(path)
    assert trace.level == "manager" and trace.steps[-1].op == "get_computed_blocks"
    assert replay_trace(trace, "impl").ok
    diverged = replay_trace(trace, "mutant:hits-not-capped")
    assert not diverged.ok
    assert diverged.divergence is not None and diverged.divergence.caught_by == "hit-cap"


def test_an_encoding_without_the_cap_fails_the_cross_check(monkeypatch):
    real = me.transition
    monkeypatch.setattr(me, "transition",
                        lambda pre, post, op, tag, mutant=None: real(
                            pre, post, op, tag, "hits-not-capped"))
    report = me.sanity_check(ManagerModelConfig(), max_worlds=40)
    assert report.failures and report.failures[0].startswith("cross-check: after [")


def test_a_spec_lookup_without_the_cap_fails_the_cross_check(monkeypatch):
    monkeypatch.setattr(sm, "max_hit_blocks", lambda m, r: r.num_tokens // m.block_size)
    report = me.sanity_check(ManagerModelConfig(), max_worlds=40)
    assert any("z3 does not admit its outcome" in f for f in report.failures)


def test_a_contradiction_in_the_manager_relation_is_refused(capsys, tmp_path, monkeypatch):
    real = me.transition
    monkeypatch.setattr(me, "transition", lambda *a, **k: [*real(*a, **k), False])
    assert kvspec(["prove", "--level", "manager", "--out", str(tmp_path)]) == 3
    out = capsys.readouterr().out
    assert "refusing to prove anything" in out and "proved by" not in out
