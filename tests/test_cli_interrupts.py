"""Ctrl-C, a closed pipe, a missing torch: ``kvspec`` as a separate process, stopping cleanly.

Each run announces on stderr when the engine of interest starts (a wrapper around it), so
that SIGINT arrives in the middle of the work, not while Python is still importing.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kvspec.conformance.cli import main

STARTED = "-- started --"

# Runs ``kvspec ARGS...`` after wrapping ``module.attribute`` to announce its start.
CHILD = f"""
import importlib, sys
module, attribute = sys.argv[1].split(":")
module = importlib.import_module(module)
original = getattr(module, attribute)
def announced(*args, **kwargs):
    print({STARTED!r}, file=sys.stderr, flush=True)
    return original(*args, **kwargs)
setattr(module, attribute, announced)
from kvspec.conformance.cli import main
sys.exit(main(sys.argv[2:]))
"""


def interrupted(announcer: str, argv: list[str], cwd: Path, after: float = 1.5
                ) -> tuple[int, str, str]:
    """Run ``kvspec argv``, send SIGINT ``after`` seconds into the announced work."""
    child = subprocess.Popen([sys.executable, "-c", CHILD, announcer, *argv], cwd=cwd,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert child.stderr is not None
    line = child.stderr.readline()
    assert line.strip() == STARTED, line + child.stderr.read()
    time.sleep(after)
    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=120)
    return child.returncode, out, err


def test_ctrl_c_in_the_random_engine_prints_how_far_it_got_and_exits_130(tmp_path):
    argv = ["check", "--level", "pool", "--settings", "thorough", "--exhaustive-seconds", "0",
            "--db", "db", "--out", "traces", "--junit", "report.xml"]
    status, out, err = interrupted("kvspec.conformance.engines.pipeline:run_random", argv,
                                   tmp_path)
    assert status == 130
    assert "Traceback" not in err
    last = err.splitlines()[-1]
    found = re.fullmatch(r"kvspec check: interrupted at the pool level after [\d.]+s, in the "
                         r"random engine \((\d+) examples, (\d+) steps run\); no trace "
                         r"written for it", last)
    assert found, err
    # The partial summary agrees with the line.
    assert out.startswith("pool level, target impl, profile current, mode strict")
    assert f"  random: {found[1]} examples, {found[2]} steps" in out
    assert not (tmp_path / "traces").exists() and not (tmp_path / "report.xml").exists()
    # The next run works as before, with the same example database.
    assert main(["check", "--level", "pool", "--max-examples", "3", "--exhaustive-seconds",
                 "0", "--db", str(tmp_path / "db"), "--quiet"]) == 0


def test_ctrl_c_in_the_exhaustive_search_says_the_depth_reached(tmp_path):
    argv = ["check", "--level", "pool", "--exhaustive-seconds", "600", "--no-db"]
    status, out, err = interrupted("kvspec.conformance.engines.pipeline:explore", argv,
                                   tmp_path)
    assert status == 130 and "Traceback" not in err
    assert re.fullmatch(r"kvspec check: interrupted at the pool level after [\d.]+s, in the "
                        r"exhaustive search \((depth \d+ complete, [\d,]+ states|no depth "
                        r"complete)\); no trace written for it", err.splitlines()[-1]), err
    assert out.startswith("pool level, target impl")


def test_ctrl_c_in_prove_stops_the_solver_and_exits_130(tmp_path):
    argv = ["prove", "--blocks", "5", "--depth", "12", "--out", "traces"]
    status, out, err = interrupted("kvspec.spec.symbolic.induction:prove", argv, tmp_path,
                                   after=1.0)
    assert status == 130, (out, err)
    assert "Traceback" not in err and "Exception ignored" not in err
    assert out.splitlines()[-1] == ("kvspec prove: interrupted at the induction proof; "
                                    "nothing above is a result")
    assert "holds to depth" not in out and "proved" not in out
    assert not (tmp_path / "traces").exists()


def test_a_reader_that_stops_early_ends_replay_quietly(tmp_path):
    steps = [{"op": "touch", "args": {"block_ids": [9]}}] * 5000  # 5,000 lines of report
    trace = tmp_path / "long.json"
    trace.write_text(json.dumps({"format": "kvspec-trace", "version": 1, "level": "pool",
                                 "config": {"num_blocks": 4}, "steps": steps}))
    child = subprocess.Popen(
        [sys.executable, "-m", "kvspec.conformance", "replay", str(trace)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stderr is not None
    assert child.stdout.readline().startswith(f"{trace}: 5000 steps")
    child.stdout.close()  # like `| head -1`
    err = child.stderr.read()
    assert child.wait(timeout=120) == 141
    assert err == ""


def test_mutants_without_torch_skip_the_store_mutants_and_print_the_matrix(tmp_path):
    no_torch = ("import sys; sys.modules['torch'] = None\n"
                "from kvspec.conformance.cli import main\n"
                "sys.exit(main(sys.argv[1:]))")
    run = subprocess.run([sys.executable, "-c", no_torch, "mutants", "forward-free",
                          "copy-only-k", "--settings", "dev"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""
    lines = run.stdout.splitlines()
    assert lines[0] == ("skipped: 1 store mutant(s) (copy-only-k): the content level needs "
                        "torch, which is not installed (pip install 'kvspec[store]')")
    assert lines[1].split()[:3] == ["mutant", "level", "caught"]
    assert lines[3].split()[:3] == ["forward-free", "pool", "yes"]
    assert re.search(r"^1/1 mutants caught in [\d.]+ s \(in this process\); 1 store mutants "
                     r"not run: no torch$", run.stdout, re.MULTILINE), run.stdout


@pytest.mark.parametrize("argv", [["check", "--level", "content"],
                                  ["replay", "content.json"]])
def test_the_content_level_without_torch_says_what_to_install(argv, tmp_path):
    (tmp_path / "content.json").write_text(json.dumps({
        "format": "kvspec-trace", "version": 1, "level": "content",
        "config": {"num_blocks": 4}, "steps": []}))
    no_torch = ("import sys; sys.modules['torch'] = None\n"
                "from kvspec.conformance.cli import main\n"
                "sys.exit(main(sys.argv[1:]))")
    run = subprocess.run([sys.executable, "-c", no_torch, *argv], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr == (f"kvspec {argv[0]}: the content level needs torch, which is not "
                          "installed (pip install 'kvspec[store]')\n")
