"""``kvspec check --junit`` and ``--html``: the same run, as CI systems and people read it."""

from __future__ import annotations

import re
from xml.etree import ElementTree as ET

from kvspec.conformance.cli import main

FAST = ["--quiet", "--no-db", "--max-examples", "5", "--steps", "10"]


def test_a_failing_check_writes_a_junit_failure_and_the_trace_page(tmp_path, capsys):
    report, page = tmp_path / "report.xml", tmp_path / "failure.html"
    status = main(["check", "--target", "mutant:forward-free", "--level", "pool",
                   "--junit", str(report), "--html", str(page), "--out", str(tmp_path),
                   *FAST])
    printed = capsys.readouterr().out
    assert status == 1
    assert printed.endswith(f"html:   {page}\n")
    suite = ET.parse(report).getroot().find("testsuite")
    assert suite is not None and (suite.get("tests"), suite.get("failures")) == ("1", "1")
    case = suite.find("testcase")
    assert case is not None and case.get("name") == "pool"
    failure = case.find("failure")
    assert failure is not None and failure.get("message") == "caught by: free_queue"
    assert failure.text == printed  # the whole report, as printed
    assert re.findall(r"<section class='step ([a-z-]+)'", page.read_text()) == [
        "ok", "divergent"]


def test_a_passing_check_writes_one_passing_case_per_level(tmp_path, capsys):
    report = tmp_path / "report.xml"
    status = main(["check", "--target", "impl", "--exhaustive-seconds", "0",
                   "--junit", str(report), "--html", str(tmp_path / "never.html"), *FAST])
    assert status == 0
    cases = ET.parse(report).getroot().findall("testsuite/testcase")
    assert [c.get("name") for c in cases] == ["pool", "manager"]
    assert all(c.find("failure") is None for c in cases)
    assert "PASS: no divergence from the spec" in (cases[0].findtext("system-out") or "")
    assert not list(tmp_path.glob("*.html"))
