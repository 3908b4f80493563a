"""``kvspec show``: a trace replayed into one static page (the browser test is
test_show_browser.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from kvspec.conformance.cli import main
from kvspec.conformance.show import replay_frames, write_html
from kvspec.conformance.trace import Trace
from test_show_browser import SIX_STEPS

#: A manager-level failure (the zoo's hits-not-capped): a second request for the same
#: two-token prompt is offered a hit on its whole prompt.
MANAGER_STEPS = {
    "format": "kvspec-trace", "version": 1, "level": "manager",
    "config": {"num_blocks": 2, "block_size": 2, "enable_caching": True,
               "profile": "current", "mode": "strict", "compare_hashes": True},
    "steps": [
        {"op": "add_request", "args": {"request_id": "r1", "prompt_token_ids": [30, 30]}},
        {"op": "get_computed_blocks", "args": {"request_id": "r1"}},
        {"op": "allocate_slots", "args": {"request_id": "r1", "num_new_tokens": 2}},
        {"op": "add_request", "args": {"request_id": "r6", "prompt_token_ids": [30, 30]}},
        {"op": "get_computed_blocks", "args": {"request_id": "r6"}},
    ],
}

#: A hybrid-level failure (the zoo's hybrid-group-id-dropped): a full-attention group and a
#: sliding window, block size 2 each; the second group's block gets the first group's hash.
HYBRID_STEPS = {
    "format": "kvspec-trace", "version": 1, "level": "hybrid",
    "config": {"num_blocks": 3, "groups": [["full", 2, None], ["sliding", 2, 3]],
               "enable_caching": True, "profile": "current", "mode": "strict",
               "compare_hashes": True},
    "steps": [
        {"op": "add_request", "args": {"request_id": "r0", "prompt_token_ids": [1, 2]}},
        {"op": "allocate_slots", "args": {"request_id": "r0", "num_new_tokens": 2}},
    ],
}


def panels(page: str) -> list[str]:
    return re.findall(r"<section class='step ([a-z-]+)'", page)


def test_a_divergent_trace_has_one_panel_per_step_and_the_last_one_marked(tmp_path):
    page = tmp_path / "six.html"
    replayed = write_html(Trace.from_json(SIX_STEPS), "mutant:stale-hash-on-reuse", page)
    text = page.read_text()
    assert panels(text) == ["ok"] * 5 + ["divergent"]
    assert replayed.verdict.startswith("diverges at step 6: caught by no-double-allocation")
    assert "class='row differs' data-observation='pool'" in text
    # Block 2 kept its stale hash: marked on both sides, with the hash on the target's.
    assert re.findall(r"class='block ([a-z ]+)' title='block 2: ref_cnt 1, hash ([a.]+|None)'",
                      text)[-2:] == [("held changed disagrees", "None"),
                                     ("held cached changed disagrees", "a.a")]
    assert "<div class='id'>0</div><div>ref 0</div><div class='hash'>null</div>" in text


def test_the_page_fetches_nothing(tmp_path):
    page = tmp_path / "six.html"
    write_html(Trace.from_json(SIX_STEPS), "mutant:stale-hash-on-reuse", page)
    text = page.read_text()
    for fetching in ("<script", "<link", "<img", "src=", "url(", "http:", "https:", "@import"):
        assert fetching not in text


def test_an_agreeing_replay_passes_and_shows_every_step(tmp_path):
    replayed = replay_frames(Trace.from_json(SIX_STEPS), "impl")
    assert replayed.divergence is None
    assert [f.status for f in replayed.frames] == ["ok"] * 7  # the fresh state, six steps
    assert replayed.frames[1].handed_out == [1, 2]
    assert replayed.verdict == "no divergence in 6 steps"


def test_a_refused_step_is_shown_as_refused_by_both():
    data = dict(SIX_STEPS, steps=[{"op": "free_blocks", "args": {"block_ids": [1]}}])
    replayed = replay_frames(Trace.from_json(data), "impl")
    assert replayed.frames[1].status == "refused"
    assert replayed.frames[1].note.startswith("refused by both, as the spec requires")


def test_steps_after_the_divergence_are_panels_marked_not_run(tmp_path):
    data = dict(SIX_STEPS, steps=[*SIX_STEPS["steps"], {"op": "reset_prefix_cache",
                                                        "args": {}}])
    page = tmp_path / "seven.html"
    write_html(Trace.from_json(data), "mutant:stale-hash-on-reuse", page)
    assert panels(page.read_text()) == ["ok"] * 5 + ["divergent", "not-run"]


def test_a_manager_trace_shows_each_requests_block_table(tmp_path):
    page = tmp_path / "manager.html"
    replayed = write_html(Trace.from_json(MANAGER_STEPS), "mutant:hits-not-capped", page)
    text = page.read_text()
    assert panels(text) == ["ok"] * 4 + ["divergent"]
    assert replayed.divergence is not None and replayed.divergence.caught_by == "hit-cap"
    assert "data-observation='request r1'" in text


def test_a_hybrid_trace_shows_one_block_table_per_request_and_group(tmp_path):
    page = tmp_path / "hybrid.html"
    replayed = write_html(Trace.from_json(HYBRID_STEPS), "mutant:hybrid-group-id-dropped", page)
    text = page.read_text()
    assert panels(text) == ["ok", "divergent"]
    assert replayed.divergence is not None and replayed.divergence.caught_by == "block_hash"
    assert "data-observation='request r0, group 0'" in text
    assert "data-observation='request r0, group 1'" in text
    assert write_html(Trace.from_json(HYBRID_STEPS), "impl", page).divergence is None


def test_kvspec_show_writes_the_page_and_says_the_verdict(tmp_path, capsys):
    trace = tmp_path / "six.json"
    trace.write_text(json.dumps(SIX_STEPS))
    out = tmp_path / "out.html"
    status = main(["show", str(trace), "--html", str(out),
                   "--target", "mutant:stale-hash-on-reuse"])
    assert status == 0
    assert capsys.readouterr().out == (
        f"{out}: 6 steps, target mutant:stale-hash-on-reuse: diverges at step 6: caught by "
        "no-double-allocation: target: block 2 was handed out still holding hash b'a.a'\n")
    assert out.read_text().startswith("<!DOCTYPE html>")


@pytest.mark.parametrize(
    ("content", "target", "message"),
    [
        ("{}", "impl", "not a kvspec-trace file (format=None)"),
        (json.dumps(SIX_STEPS), "nopkg:factory", "--target 'nopkg:factory': cannot import"),
        (json.dumps(dict(SIX_STEPS, level="content", steps=[])), "impl",
         "show: a content level trace; expected a level of pool, manager, hybrid"),
    ],
)
def test_kvspec_show_refuses_what_it_cannot_draw_in_one_line(tmp_path, capsys, content,
                                                             target, message):
    trace = tmp_path / "bad.json"
    trace.write_text(content)
    status = main(["show", str(trace), "--html", str(tmp_path / "x.html"), "--target", target])
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith(f"kvspec show: {message}") and err.count("\n") == 1
    assert not Path(tmp_path / "x.html").exists()


def test_a_fresh_state_that_already_diverges_is_the_marked_panel_and_no_step_is_drawn(
        tmp_path):
    data = dict(SIX_STEPS, steps=[])
    page = tmp_path / "fresh.html"
    replayed = write_html(Trace.from_json(data), "mutant:usage-counts-null", page)
    text = page.read_text()
    assert replayed.verdict.startswith("diverges at step 0: caught by usage-excludes-null")
    assert panels(text) == []
    assert "<div class='initial divergent'><h2>fresh state</h2>" in text
