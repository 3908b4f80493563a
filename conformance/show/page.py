"""A replayed trace as one static, self-contained HTML page.

Everything is inline (styles, no script, no font or image to fetch), so the page opens
from a CI artifact or a mail attachment with no network, and shows the same thing
everywhere. Layout: a verdict line, then the fresh state and one panel per step, each with
the spec and the target side by side; in each side the pool as a row of blocks (ref
count, hash, the null block marked), the free queue in eviction order, the block tables
(per request at the manager level, per request and KV-cache group at the hybrid level; at
the pool level, the blocks each step handed out),
and the counters. What a step changed is outlined; where the sides disagree the
observation is marked on both; the divergent step is the red panel.
"""

from __future__ import annotations

import html
import json
from typing import Any

from kvspec.conformance.report import count_steps
from kvspec.conformance.show.frames import Frame, Replayed

NULL_BLOCK = 0
"""The pool's block 0 pads block tables and is never handed out (spec/pool.py)."""

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#1d1d1f;background:#fafafa}
h1{font-size:1.3em;margin:0 0 .2em}
.verdict{padding:.5em .8em;border-radius:6px;margin:.6em 0 1em;font-weight:600}
.verdict.fail{background:#fde2e1;color:#8a1c13}.verdict.pass{background:#e1f5e4;color:#1b5e20}
.meta{color:#555;font-size:.9em}
.step,.initial{background:#fff;border:1px solid #ddd;border-radius:8px;margin:.8em 0;
 padding:.6em .9em}
.step.divergent,.initial.divergent{border:3px solid #d93025;background:#fff6f5}
.step.refused{border-left:6px solid #f0a500}
.step.not-run{opacity:.5}
.step h2,.initial h2{font-size:1em;margin:.1em 0 .4em;font-family:ui-monospace,monospace}
.badge{font-size:.8em;padding:.1em .5em;border-radius:9px;margin-left:.6em;
 font-family:system-ui,sans-serif;background:#eee}
.divergent .badge{background:#d93025;color:#fff}.refused .badge{background:#f0a500}
.note{margin:.2em 0 .5em;color:#333}.divergent .note{color:#8a1c13;font-weight:600}
.sides{display:grid;grid-template-columns:1fr 1fr;gap:1em}
.side h3{font-size:.85em;text-transform:uppercase;letter-spacing:.05em;color:#666;margin:.2em 0}
.row{display:flex;align-items:center;gap:.5em;margin:.3em 0;padding:.15em .3em;
 border-radius:4px}
.row .label{width:10em;flex:none;color:#555;font-size:.85em}
.row.differs{background:#fde2e1;outline:2px solid #d93025}
.blocks{display:flex;flex-wrap:wrap;gap:4px}
.block{width:3.6em;border:1px solid #999;border-radius:4px;text-align:center;
 font-size:.75em;background:#e8f0fe;padding:1px 0}
.block .id{font-weight:700}.block .hash{color:#555;font-family:ui-monospace,monospace;
 overflow:hidden;text-overflow:ellipsis;white-space:nowrap;padding:0 2px}
.block.free{background:#fff}.block.cached{background:#e6f4ea}
.block.free.cached{background:#f3fbf5;border-style:dashed}
.block.null{background:repeating-linear-gradient(45deg,#eee,#eee 4px,#ddd 4px,#ddd 8px);
 color:#666}
.block.changed{box-shadow:0 0 0 2px #1a73e8}
.block.disagrees{box-shadow:0 0 0 3px #d93025}
.queue .block{width:2.4em}.arrow{color:#888;font-size:.8em}
.value{font-family:ui-monospace,monospace}
.legend{font-size:.85em;color:#555;display:flex;gap:1em;flex-wrap:wrap;align-items:center}
.legend .block{display:inline-block;width:auto;padding:0 .4em}
"""


def render(replayed: Replayed) -> str:
    """The page for ``replayed`` (see the module docstring)."""
    trace = replayed.trace
    failed = replayed.divergence is not None or any(
        f.status == "outside-scope" for f in replayed.frames)
    fresh, *steps = replayed.frames  # the fresh state (which may itself diverge), the steps
    handed: list[tuple[int, list[int]]] = []
    panels = []
    previous = fresh if fresh.status == "ok" else None
    for frame in steps:
        if frame.handed_out:
            handed.append((frame.index, frame.handed_out))
        panels.append(_panel(frame, previous, list(handed), trace.level))
        if frame.status in ("ok", "refused"):
            previous = frame
    head = (
        f"<h1>kvspec trace: {trace.level} level, target {_e(replayed.target)}</h1>"
        f"<div class='meta'>{count_steps(len(trace.steps))}, config "
        f"<span class='value'>{_e(json.dumps(trace.config))}</span>"
        + (f"<br>note: {_e(trace.note)}" if trace.note else "") + "</div>"
        f"<div class='verdict {'fail' if failed else 'pass'}'>{_e(replayed.verdict)}</div>"
        + _legend()
    )
    note = f"<p class='note'>{_e(fresh.note)}</p>" if fresh.note else ""
    initial = (f"<div class='initial {fresh.status}'><h2>fresh state</h2>{note}"
               f"{_sides(fresh, None, [], trace.level)}</div>")
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>kvspec trace: {_e(replayed.verdict)}</title>"
        f"<style>{STYLE}</style></head><body>{head}{initial}{''.join(panels)}</body></html>\n"
    )


def _panel(frame: Frame, previous: Frame | None, handed: list[tuple[int, list[int]]],
           level: str) -> str:
    assert frame.step is not None
    title = frame.step.describe()
    badge = {"ok": "", "refused": "refused", "divergent": "diverges here",
             "outside-scope": "outside scope", "not-run": "not run"}[frame.status]
    changed = _changed(frame, previous) if frame.status in ("ok", "refused") else []
    lines = []
    if frame.note:
        lines.append(f"<p class='note'>{_e(frame.note)}</p>")
    if changed:
        lines.append(f"<p class='meta'>changed: {_e(', '.join(changed))}</p>")
    body = "" if frame.status in ("outside-scope", "not-run") else _sides(
        frame, previous, handed, level)
    return (
        f"<section class='step {frame.status}' id='step-{frame.index}' "
        f"data-step='{frame.index}'><h2>{frame.index}. {_e(title)}"
        + (f"<span class='badge'>{badge}</span>" if badge else "")
        + f"</h2>{''.join(lines)}{body}</section>"
    )


def _changed(frame: Frame, previous: Frame | None) -> list[str]:
    if previous is None:
        return []
    return [k for k, v in frame.spec.items() if previous.spec.get(k) != v]


def _sides(frame: Frame, previous: Frame | None, handed: list[tuple[int, list[int]]],
           level: str) -> str:
    differs = set(frame.differs)
    out = []
    for side, other in (("spec", "target"), ("target", "spec")):
        view = getattr(frame, side)
        before = getattr(previous, side) if previous is not None else {}
        out.append(f"<div class='side {side}'><h3>{side}</h3>"
                   f"{_side(view, before, getattr(frame, other), differs, handed, level)}"
                   "</div>")
    return f"<div class='sides'>{''.join(out)}</div>"


def _side(view: dict[str, Any], before: dict[str, Any], other: dict[str, Any],
          differs: set[str], handed: list[tuple[int, list[int]]], level: str) -> str:
    if not view:
        return "<p class='meta'>(could not be observed)</p>"
    rows = []
    refs = view.get("ref_cnt") or []
    hashes = view.get("block_hash") or []
    if "ref_cnt" in view or "block_hash" in view:
        blocks = [_block(b, view, before, other) for b in range(max(len(refs), len(hashes)))]
        rows.append(_row("pool", "".join(blocks), {"ref_cnt", "block_hash"} & differs))
    if "free_queue" in view:
        queue = "".join(f"<div class='block free'><div class='id'>{b}</div></div>"
                        for b in view["free_queue"]) or "<span class='meta'>empty</span>"
        rows.append(_row("free queue", "<span class='arrow'>evicted first &rarr;</span>"
                         f"<div class='blocks queue'>{queue}</div>", {"free_queue"} & differs))
    if level in ("manager", "hybrid"):
        tables = view.get("tables") or {}
        for request, ids in tables.items():
            if level == "manager":
                rows.append(_row(f"request {request}", _ids(ids), {"tables"} & differs))
                continue
            for group, group_ids in enumerate(ids):  # hybrid: one table per group
                rows.append(_row(f"request {request}, group {group}", _ids(group_ids),
                                 {"tables"} & differs))
        if not tables:
            rows.append(_row("block tables", "<span class='meta'>none</span>",
                             {"tables"} & differs))
    else:
        for index, ids in handed:
            rows.append(_row(f"handed out by step {index}", _ids(ids), set()))
    for key in ("num_free_blocks", "usage", "stats"):
        if key in view:
            rows.append(_row(key.replace("_", " "),
                             f"<span class='value'>{_e(_scalar(view[key]))}</span>",
                             {key} & differs))
    for key in sorted(set(view) - {"ref_cnt", "block_hash", "free_queue", "tables",
                                   "num_free_blocks", "usage", "stats"}):
        rows.append(_row(key, f"<span class='value'>{_e(view[key])}</span>", {key} & differs))
    return "".join(rows)


def _block(b: int, view: dict[str, Any], before: dict[str, Any], other: dict[str, Any]
           ) -> str:
    """Block ``b``: its kind, and whether the step changed it or the sides disagree on it."""
    ref, h = _at(view, "ref_cnt", b), _at(view, "block_hash", b)
    changed = bool(before) and (ref, h) != (_at(before, "ref_cnt", b),
                                            _at(before, "block_hash", b))
    disagree = bool(other) and (ref, h) != (_at(other, "ref_cnt", b),
                                            _at(other, "block_hash", b))
    kinds = ["null"] if b == NULL_BLOCK else [
        "free" if b in (view.get("free_queue") or []) else "held",
        *(["cached"] if h is not None else [])]
    marks = (["changed"] if changed else []) + (["disagrees"] if disagree else [])
    classes = " ".join(["block", *kinds, *marks])
    shown = "null" if b == NULL_BLOCK else ("" if h is None else str(h))
    return (f"<div class='{classes}' title='block {b}: ref_cnt {ref}, hash {_e(h)}'>"
            f"<div class='id'>{b}</div><div>ref {ref}</div>"
            f"<div class='hash'>{_e(shown) or '&nbsp;'}</div></div>")


def _at(view: dict[str, Any], key: str, b: int) -> Any:
    values = view.get(key) or []
    return values[b] if b < len(values) else None


def _ids(ids: list[int]) -> str:
    return ("<div class='blocks queue'>"
            + "".join(f"<div class='block'><div class='id'>{b}</div></div>" for b in ids)
            + "</div>")


def _row(label: str, content: str, differs: set[str]) -> str:
    mark = " differs" if differs else ""
    return (f"<div class='row{mark}' data-observation='{_e(label)}'>"
            f"<span class='label'>{_e(label)}</span>{content}</div>")


def _scalar(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return json.dumps(value) if isinstance(value, dict) else str(value)


def _legend() -> str:
    return (
        "<div class='legend'>blocks: "
        "<span class='block null'>null block</span>"
        "<span class='block free'>free</span>"
        "<span class='block held cached'>held, cached (hash shown)</span>"
        "<span class='block free cached'>free, still cached</span>"
        "<span class='block held'>held</span>"
        "<span class='block changed'>changed by the step</span>"
        "<span class='block disagrees'>spec and target disagree on it</span>"
        "<span class='row differs'>spec and target differ</span></div>"
    )


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)
