"""What ``kvspec prove`` prints says exactly what was shown, of what, and what was not."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from kvspec.conformance.cli import main as kvspec
from kvspec.spec.invariants import INVARIANTS
from kvspec.spec.symbolic.bmc import all_invariant_names
from kvspec.spec.symbolic.model import DISCIPLINED, NOT_MODELLED, REQUEST_INVARIANTS, ModelConfig


def test_the_model_proves_the_machines_invariants_scoped_as_the_machines_scope_them():
    names = all_invariant_names(ModelConfig())
    assert set(names) == set(INVARIANTS) | set(REQUEST_INVARIANTS)
    assert {n for n, inv in INVARIANTS.items() if inv.assumes} == DISCIPLINED
    assert {"eviction-order"} == DISCIPLINED


def test_each_row_names_the_instance_the_scope_and_the_cross_check(capsys, tmp_path):
    assert kvspec(["prove", "--blocks", "3", "--table-len", "2", "--cross-check-worlds", "10",
                   "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for what in NOT_MODELLED:
        assert f"- {what}:" in out
    assert "cross-checked against the spec: " in out
    assert "operations first admitted at depth: allocate@0" in out
    rows = [line for line in out.splitlines() if "proved" in line]
    assert len(rows) == 10
    for row in rows:
        assert "proved by induction for N=3, R=2, L=2, H=3 (8-bit)" in row
        assert "model cross-checked against spec" in row
        assert ("under the chain discipline" in row) == row.lstrip().startswith("eviction-order")


def test_a_search_cut_short_says_why(capsys, tmp_path):
    code = kvspec(["prove", "--mutant", "touch-leaves-in-queue", "--blocks", "3",
                   "--table-len", "2", "--depth", "6", "--no-induction",
                   "--cross-check-worlds", "5", "--out", str(tmp_path)])
    assert code == 0
    out = capsys.readouterr().out
    assert "holds to depth 4 (search stopped where another invariant broke)" in out


def test_an_interrupt_prints_the_depth_reached_and_exits_130(tmp_path):
    run_cli = "from kvspec.conformance.cli import main; raise SystemExit(main())"
    cmd = [sys.executable, "-c", run_cli, "prove", "--no-induction", "--depth", "40",
           "--blocks", "6", "--cross-check-worlds", "5", "--out", str(tmp_path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("  operations first admitted"):
            break
    time.sleep(2.0)  # inside bounded model checking, a few depths in
    proc.send_signal(signal.SIGINT)
    rest = proc.stdout.read()
    assert proc.wait(timeout=60) == 130
    assert "kvspec prove: interrupted at depth " in rest
    assert "holds to depth" not in rest
