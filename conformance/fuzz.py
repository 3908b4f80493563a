"""Fuzzing campaigns: the plugin's random tests run for hours by HypoFuzz.

kvspec does not run a fuzzing loop of its own. HypoFuzz (the optional ``kvspec[fuzz]``
extra) already runs Hypothesis tests as fuzz targets, spreads them over processes, steers
by coverage, keeps one example database and serves a dashboard; the plugin's
``test_random`` is an ordinary Hypothesis test over the same machine ``kvspec check``
runs, so a campaign is HypoFuzz pointed at it:

    hypothesis fuzz -n WORKERS -- --kvspec-target T --kvspec-only --kvspec-db DIR

:func:`run_campaign` runs exactly that for a while, stops it, then replays the database
once through pytest (``--kvspec-replay``): every failure found is minimized, reported as
``kvspec check`` reports it, and written as a trace file. Several hosts share a campaign
by sharing the database (a shared folder, or Hypothesis's Redis database in the
profile); a failure found on one host is then replayed first everywhere.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

HYPOFUZZ_MISSING = ("kvspec fuzz needs HypoFuzz: pip install 'kvspec[fuzz]' "
                    "(its licence allows non-commercial use only; see the README)")


@dataclass(frozen=True)
class Campaign:
    target: str
    level: str = "all"
    mode: str = "strict"
    profile: str = "current"
    db: Path = Path(".kvspec") / "fuzz-examples"
    out: Path = Path(".kvspec") / "traces"

    def pytest_args(self) -> list[str]:
        """The plugin's options selecting this campaign's tests (nothing else)."""
        return ["--kvspec-target", self.target, "--kvspec-level", self.level,
                "--kvspec-mode", self.mode, "--kvspec-profile", self.profile,
                "--kvspec-db", str(self.db), "--kvspec-out", str(self.out), "--kvspec-only",
                "-p", "no:cacheprovider"]


def hypofuzz_installed() -> bool:
    return importlib.util.find_spec("hypofuzz") is not None


def fuzz_command(campaign: Campaign, *, workers: int, dashboard_port: int | None) -> list[str]:
    """HypoFuzz's command line for ``campaign``."""
    board = ["--port", str(dashboard_port)] if dashboard_port is not None else ["--no-dashboard"]
    return [sys.executable, "-c", "from hypothesis.extra.cli import main; main()",
            "fuzz", "-n", str(workers), *board, "--", *campaign.pytest_args()]


def replay_command(campaign: Campaign) -> list[str]:
    """pytest replaying the campaign's database only: its failures, reported."""
    return [sys.executable, "-m", "pytest", *campaign.pytest_args(), "--kvspec-replay",
            "-k", "test_random", "-q", "-n", "0"]


def run_campaign(campaign: Campaign, *, workers: int, seconds: float,
                 dashboard_port: int | None = None) -> int:
    """Fuzz for ``seconds``, then replay the database; pytest's exit status (0: no failure
    saved, 1: failures, reported above). HypoFuzz's stderr (where stopping it prints every
    worker's interrupted stack) goes to ``hypofuzz.log`` beside the traces folder."""
    command = fuzz_command(campaign, workers=workers, dashboard_port=dashboard_port)
    log = campaign.out.parent / "hypofuzz.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as errors:
        # A session of its own, so that stopping it stops HypoFuzz's workers too.
        fuzzer = subprocess.Popen(command, start_new_session=True, stderr=errors)
        try:
            fuzzer.wait(timeout=seconds)
            print(f"kvspec fuzz: HypoFuzz stopped by itself (status {fuzzer.returncode}); "
                  f"see {log}")
        except subprocess.TimeoutExpired:
            pass
        finally:
            _stop(fuzzer)
    print(f"kvspec fuzz: stopped after {seconds:.0f}s; replaying the example database "
          f"{campaign.db}", flush=True)
    return subprocess.call(replay_command(campaign))


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Interrupt the campaign's process group as Ctrl-C would, then kill what remains."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGINT)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=20)
    with contextlib.suppress(ProcessLookupError):  # workers left behind, or a stuck hub
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
