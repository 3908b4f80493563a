"""``kvspec show``: a trace as a page you can look at (:mod:`.frames` replays it,
:mod:`.page` renders it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kvspec.conformance.report import write_atomically
from kvspec.conformance.show.frames import Replayed, replay_frames
from kvspec.conformance.show.page import render
from kvspec.conformance.trace import Trace


def write_html(trace: Trace, target: str | Any, path: str | Path, *,
               target_name: str = "") -> Replayed:
    """Replay ``trace`` on ``target`` and write the page to ``path``; the replay."""
    replayed = replay_frames(trace, target, target_name=target_name)
    write_atomically(Path(path), render(replayed))
    return replayed


__all__ = ["Replayed", "render", "replay_frames", "write_html"]
