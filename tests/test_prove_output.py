"""What ``kvspec prove`` prints says exactly what was shown, of what, and what was not."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from kvspec.conformance.cli import main as kvspec
from kvspec.spec.invariants import INVARIANTS, snapshot
from kvspec.spec.symbolic.bmc import all_invariant_names
from kvspec.spec.symbolic.concrete import admits_exactly
from kvspec.spec.symbolic.explicit import check_world, run_ops
from kvspec.spec.symbolic.model import (
    DISCIPLINED,
    NOT_MODELLED,
    REQUEST_INVARIANTS,
    ModelConfig,
    Op,
    all_ops,
)


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


def test_a_middle_fork_leaves_the_discipline_and_eviction_order_is_then_not_claimed():
    """The sequence by which the pool machine once "refuted" eviction-order: a copy-on-write
    fork of a shared block that is not a table's last. The model has it; the statement
    breaks on the spec's state, which is outside the scope the invariant assumes, and the
    model stops claiming it there, as the machines waive it."""
    cfg = ModelConfig(num_blocks=4)
    ops = [Op("allocate2", 0), Op("cache", 0, 1), Op("cache", 0, 2), Op("hit", 1, 2),
           Op("fork_at", 1, 0), Op("free", 0), Op("free", 1)]
    worlds, _calls = run_ops(cfg, ops)
    last = worlds[-1]
    assert INVARIANTS["eviction-order"].check(snapshot(last.pool))
    assert not last.disciplined and worlds[4].disciplined
    assert check_world(cfg, last) == {}
    for w, op in zip(worlds, ops, strict=False):
        assert admits_exactly(cfg, w, all_ops(cfg).index(op)) is None
