"""``kvspec prove`` refuses to say "proved" of a model that is vacuous or that drifted
from the spec: each contradiction and each bug below is injected, and the check that
catches it is named in what ``prove`` prints.

The injections patch a module attribute, as an edit of that file would change it; every
part of the model checker reads the encoding, the spec and the twins through their
modules, so the patch reaches the cross-check, the induction proof and the search alike.
"""

from __future__ import annotations

import pytest
import z3
from kvspec.conformance.cli import main as kvspec
from kvspec.spec import pool
from kvspec.spec.profiles import CLASSIC
from kvspec.spec.symbolic import bmc, encoding, induction
from kvspec.spec.symbolic.encoding import _Effect, _Ops
from kvspec.spec.symbolic.explicit import reachable
from kvspec.spec.symbolic.model import ModelConfig
from kvspec.spec.symbolic.sanity import PATHS, sanity_check, strengthening_failures

SMALL = ["--blocks", "3", "--table-len", "2", "--cross-check-worlds", "20"]


def _prove(capsys, tmp_path, *extra: str) -> tuple[int, str]:
    code = kvspec(["prove", *SMALL, "--out", str(tmp_path), *extra])
    return code, capsys.readouterr().out


def _refused(code: int, out: str, check: str) -> None:
    assert code == 3
    assert "refusing to prove anything" in out
    assert f"- {check}:" in out
    assert "proved" not in out.split("refusing")[1]
    assert "proved by" not in out


def test_the_unpatched_model_passes_every_check_and_every_path_fires():
    report = sanity_check(ModelConfig(num_blocks=4))
    assert report.ok, report.failures
    assert set(report.fired) == set(PATHS)
    assert report.fired["fork-copy"] == 3 and report.fired["allocate-evicting"] == 4


def test_false_in_the_initial_state_is_caught_by_initial_state(capsys, tmp_path, monkeypatch):
    real = encoding.initial
    monkeypatch.setattr(encoding, "initial", lambda s: [*real(s), z3.BoolVal(False)])
    _refused(*_prove(capsys, tmp_path), "initial-state")


def test_false_in_the_transition_relation_is_caught_by_the_cross_check(
    capsys, tmp_path, monkeypatch
):
    real = encoding.transition
    monkeypatch.setattr(encoding, "transition",
                        lambda *a, **k: [*real(*a, **k), z3.BoolVal(False)])
    code, out = _prove(capsys, tmp_path)
    _refused(code, out, "cross-check")
    assert "the spec carries it out, z3 admits no post-state" in out


def test_a_hit_guard_that_never_holds_is_caught(capsys, tmp_path, monkeypatch):
    real = _Ops.hit

    def never(self, q, h):
        e = real(self, q, h)
        return _Effect(z3.BoolVal(False), e.updates)

    monkeypatch.setattr(_Ops, "hit", never)
    code, out = _prove(capsys, tmp_path)
    _refused(code, out, "cross-check")
    assert "hit(r0, h1): the spec carries it out, z3 admits no post-state" in out
    assert "- operations-enabled: z3 never admits hit" in out


def test_a_fork_without_its_copy_path_is_caught_by_the_cross_check(
    capsys, tmp_path, monkeypatch
):
    real = _Ops.fork

    def no_copy(self, q):
        return _Effect(real(self, q).guard, {})  # a fork never copies: nothing changes

    monkeypatch.setattr(_Ops, "fork", no_copy)
    code, out = _prove(capsys, tmp_path)
    _refused(code, out, "cross-check")
    assert "fork(r" in out and "differs from the spec's" in out


def test_a_spec_touch_that_leaves_hits_queued_is_caught_by_the_cross_check(
    capsys, tmp_path, monkeypatch
):
    def touch(s, block_ids):
        for b in block_ids:
            if b != pool.NULL_BLOCK:
                s.ref_cnt[b] += 1

    monkeypatch.setattr(pool, "touch", touch)
    code, out = _prove(capsys, tmp_path)
    _refused(code, out, "cross-check")
    assert "hit(" in out and "inq[" in out


def test_a_spec_usage_over_all_blocks_is_caught_by_the_cross_check(
    capsys, tmp_path, monkeypatch
):
    monkeypatch.setattr(pool, "get_usage", lambda s: 1.0 - len(s.free_queue) / s.num_blocks)
    code, out = _prove(capsys, tmp_path)
    _refused(code, out, "cross-check")
    assert "get_usage reports" in out


def test_a_drift_found_while_decoding_is_reported_with_no_traceback(
    capsys, tmp_path, monkeypatch
):
    # The executable model now says the final state of every z3 counterexample is fine.
    monkeypatch.setattr(bmc, "check_world", lambda *a, **k: {})
    code, out = _prove(capsys, tmp_path, "--mutant", "forward-free", "--no-induction")
    assert code == 3
    assert "- model drift found while decoding a counterexample: z3 says" in out
    assert "Traceback" not in out
    assert list(tmp_path.iterdir()) == []


def test_a_strengthening_that_only_a_vacuous_relation_keeps_is_caught(monkeypatch):
    cfg = ModelConfig(num_blocks=3, table_len=2)
    real_aux, real_step = encoding.auxiliary_terms, encoding.step_values

    def aux(s):
        return {**real_aux(s), "nothing-allocated": s.ref[1] == 0}

    monkeypatch.setattr(induction, "auxiliary_terms", aux)
    # False in the relation every query is built from (transition and induction's).
    monkeypatch.setattr(encoding, "step_values",
                        lambda *a, **k: (z3.BoolVal(False), real_step(*a, **k)[1]))
    survivors, _dropped, _ = induction.houdini(cfg)
    assert "nothing-allocated" in survivors  # a contradiction keeps every candidate
    monkeypatch.setattr("kvspec.spec.symbolic.sanity.auxiliary_terms", aux)
    failed = strengthening_failures(cfg, reachable(cfg, 2), survivors)
    assert any(f.startswith("strengthening-holds: nothing-allocated") for f in failed)


@pytest.mark.parametrize(
    "cfg",
    [ModelConfig(num_blocks=3, table_len=2, profile=CLASSIC),
     ModelConfig(num_blocks=3, table_len=2, enable_caching=False)],
    ids=["classic", "caching-off"],
)
def test_the_cross_check_passes_in_the_other_profile_and_with_caching_off(cfg):
    report = sanity_check(cfg, max_worlds=30)
    assert report.ok, report.failures
    assert {"fork-copy", "fork-middle-copy", "free-tail", "allocate-two"} <= (
        set(report.fired) | set(report.unreached()))
    if cfg.enable_caching:
        assert "fork-middle-copy" in report.fired
    else:
        assert not any(p.startswith(("cache", "hit")) for p in report.fired)
