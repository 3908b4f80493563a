"""``kvspec prove``: a proof table for the spec, a shortest trace for a mutant."""

from __future__ import annotations

import json

from kvspec.conformance.cli import main as kvspec
from kvspec.conformance.trace import Trace
from kvspec.spec.symbolic.twins import MUTANTS


def test_prove_proves_every_invariant_of_the_spec(capsys, tmp_path):
    assert kvspec(["prove", "--blocks", "3", "--table-len", "2", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for name in ("eviction-order", "no-double-allocation", "table-references"):
        assert f"{name} " in out
    assert out.count("proved by induction for N=3, R=2, L=2, H=3 (8-bit)") == 10
    assert "uncached-suffix-unhashed" in out  # the auxiliary invariants are listed
    assert list(tmp_path.iterdir()) == []


def test_prove_without_induction_reports_the_depth_checked(capsys, tmp_path):
    code = kvspec(["prove", "--blocks", "3", "--table-len", "2", "--depth", "3",
                   "--no-induction", "--invariant", "eviction-order", "--out", str(tmp_path)])
    assert code == 0
    assert "holds to depth 3" in capsys.readouterr().out


def test_prove_a_mutant_prints_numbered_steps_and_writes_a_trace(capsys, tmp_path):
    code = kvspec(["prove", "--mutant", "forward-free", "--blocks", "3", "--table-len", "2",
                   "--invariant", "eviction-order", "--out", str(tmp_path)])
    assert code == 0
    out = capsys.readouterr().out
    assert "counterexample of length 4" in out
    assert "  1. allocate2(r0)" in out and "  4. free(r0)" in out
    path = tmp_path / "prove-forward-free-current-eviction-order.json"
    trace = Trace.load(path)
    assert trace.steps[-1].op == "free_blocks"
    assert "forward-free" in json.loads(path.read_text())["note"]


def test_prove_finds_a_mutant_that_breaks_no_invariant_by_its_divergence(capsys, tmp_path):
    code = kvspec(["prove", "--mutant", "all-frees-appended", "--blocks", "3",
                   "--table-len", "2", "--out", str(tmp_path)])
    assert code == 0
    out = capsys.readouterr().out
    assert out.count("proved by induction for N=3, R=2, L=2, H=3 (8-bit)") == 10
    assert "differs-from-spec      counterexample of length 2" in out
    assert "free queue [1, 2] vs [2, 1]" in out
    assert [p.name for p in tmp_path.iterdir()] == [
        "prove-all-frees-appended-current-differs-from-spec.json"
    ]


def test_prove_lists_the_symbolic_mutants(capsys):
    assert kvspec(["prove", "--list-mutants"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in MUTANTS)


def test_prove_refuses_an_unknown_mutant_with_the_valid_names(capsys):
    assert kvspec(["prove", "--mutant", "no-such-bug"]) == 2
    assert "forward-free" in capsys.readouterr().err
