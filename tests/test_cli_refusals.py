"""Every command refuses bad input in one line on stderr, exits 2, and writes nothing.

Each case runs ``kvspec`` in this process in an empty folder: after a refusal, stdout is
empty, stderr is one line naming the problem (never a traceback), and the folder is still
empty (no trace, no example database, no report).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from kvspec.conformance.cli import COMMANDS, main

FACTORY_CALL = "factory(4, enable_caching=True, profile='current')"

TARGETS = [
    ("nosuchmodule:f", "cannot import module 'nosuchmodule'"),
    ("os:nosuchattr", "module 'os' has no attribute 'nosuchattr'"),
    ("json:loads", f"{FACTORY_CALL} raised TypeError: the JSON object"),
    ("", "expected 'impl', 'vllm' or 'module.path:factory'"),
    (":", "expected 'impl', 'vllm' or 'module.path:factory' (exactly one ':'"),
    ("os", "expected 'impl', 'vllm' or 'module.path:factory' (exactly one ':'"),
    ("mutant:nosuch", "no mutant 'nosuch'; see kvspec mutants --list"),
    ("broken_factories:raises",
     f"{FACTORY_CALL} raised RuntimeError: no allocator today"),
    ("broken_factories:returns_none", f"{FACTORY_CALL} returned None; expected a PoolTarget"),
    ("broken_factories:takes_nothing", f"the factory cannot be called as {FACTORY_CALL}"),
    ("broken_factories:half_a_pool",
     f"{FACTORY_CALL} returned a HalfAPool, which lacks the PoolTarget method(s) touch, "
     "free_blocks, cache_block, get_cached_block, reset_prefix_cache, fork_block, "
     "get_num_free_blocks, get_usage, ref_cnt, block_hash, free_block_ids"),
    # A factory that exits must not look like a pass (exit 0, no output).
    ("broken_factories:exits", f"{FACTORY_CALL} raised SystemExit: 0"),
]


def refused(argv: list[str], capsys: pytest.CaptureFixture[str], folder: Path) -> str:
    """Run ``kvspec argv``; assert a one-line refusal with status 2 and nothing written."""
    before = sorted(folder.rglob("*"))
    status = main(argv)
    out, err = capsys.readouterr()
    assert status == 2, (out, err)
    assert out == ""
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"kvspec {argv[0]}: ")
    assert sorted(folder.rglob("*")) == before  # nothing written
    return err.strip()


@pytest.fixture
def empty_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize(("target", "message"), TARGETS, ids=[t or "empty" for t, _ in TARGETS])
def test_a_target_that_cannot_work_is_refused_before_the_run(target, message, capsys,
                                                             empty_folder):
    err = refused(["check", "--target", target], capsys, empty_folder)
    assert err.startswith(f"kvspec check: --target {target!r}: {message}")


def test_the_vllm_target_without_vllm_says_how_to_install_it(capsys, empty_folder,
                                                              monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # as if vLLM were not installed
    err = refused(["check", "--target", "vllm"], capsys, empty_folder)
    assert err.startswith("kvspec check: --target 'vllm': the 'vllm' target needs upstream "
                          "vLLM")
    assert "scripts/install-vllm-target.sh" in err


def test_a_target_that_exits_during_the_run_is_an_error_not_a_pass(capsys, empty_folder):
    status = main(["check", "--target", "broken_factories:exits_on_fork", "--level", "pool",
                   "--quiet", "--no-db"])
    out, err = capsys.readouterr()
    assert status == 2
    assert err == ("kvspec check: --target 'broken_factories:exits_on_fork': the target "
                   "raised SystemExit(0) during the run; nothing written\n")
    assert list(empty_folder.iterdir()) == []


@pytest.mark.parametrize(("device", "message"), [
    ("bogus", "device 'bogus' is not available: Expected one of cpu"),
    ("meta", "device 'meta' holds no data (shapes only)"),
    ("cuda", "device 'cuda' is not available"),
    ("cuda:7", "device 'cuda:7' is not available"),
])
def test_a_device_the_content_level_cannot_use_is_refused(device, message, capsys,
                                                          empty_folder):
    torch = pytest.importorskip("torch")
    if device.startswith("cuda") and torch.cuda.is_available() and (
            device == "cuda" or torch.cuda.device_count() > 7):
        pytest.skip(f"{device} exists on this machine")
    err = refused(["check", "--level", "content", "--device", device], capsys, empty_folder)
    assert err.startswith(f"kvspec check: --level content: {message}")


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--max-examples", "-5", "expected a whole number of at least 1, got -5"),
    ("--max-examples", "0", "expected a whole number of at least 1, got 0"),
    ("--steps", "-1", "expected a whole number of at least 1, got -1"),
    ("--steps", "0", "expected a whole number of at least 1, got 0"),
    ("--steps", "many", "expected a whole number, got 'many'"),
    ("--exhaustive-seconds", "-1", "expected a finite number of at least 0, got -1"),
    ("--exhaustive-seconds", "nan", "expected a finite number of at least 0, got nan"),
])
def test_a_count_the_engines_cannot_honour_is_refused(option, value, message, capsys,
                                                      empty_folder):
    err = refused(["check", option, value], capsys, empty_folder)
    assert err == f"kvspec check: argument {option}: {message} (see kvspec check --help)"


def test_an_unknown_settings_profile_in_the_environment_is_refused(capsys, empty_folder,
                                                                   monkeypatch):
    monkeypatch.setenv("KVSPEC_SETTINGS", "bogus")
    err = refused(["check"], capsys, empty_folder)
    assert err == ("kvspec check: unknown settings profile 'bogus' (from $KVSPEC_SETTINGS); "
                   "expected one of: dev, ci, thorough")


@pytest.mark.parametrize("command", [
    ["check", "--target", "mutant:forward-free", "--level", "pool"],
    ["prove", "--mutant", "forward-free"],
])
def test_an_output_folder_that_is_a_file_is_refused_before_any_work(command, capsys,
                                                                    empty_folder):
    (empty_folder / "taken").write_text("mine\n")
    err = refused([*command, "--out", "taken"], capsys, empty_folder)
    assert err == f"kvspec {command[0]}: --out taken: exists and is not a folder"
    assert (empty_folder / "taken").read_text() == "mine\n"


@pytest.mark.parametrize(("option", "path", "message"), [
    ("--junit", "folder", "--junit folder: is a folder; expected a file to write"),
    ("--html", "taken/page.html", "--html taken/page.html: taken is not a folder"),
    ("--out", "taken/traces", "--out taken/traces: taken is not a folder"),
    ("--db", "taken", "--db taken: exists and is not a folder"),
])
def test_a_report_path_that_cannot_be_written_is_refused_before_any_work(
        option, path, message, capsys, empty_folder):
    (empty_folder / "taken").write_text("mine\n")
    (empty_folder / "folder").mkdir()
    err = refused(["check", "--level", "pool", option, path], capsys, empty_folder)
    assert err == f"kvspec check: {message}"


def test_a_page_for_a_level_kvspec_show_cannot_draw_is_refused_before_any_work(
        capsys, empty_folder):
    err = refused(["check", "--level", "content", "--html", "page.html"], capsys, empty_folder)
    assert err == ("kvspec check: --html: kvspec show cannot draw a content level trace "
                   "(it draws pool, manager, hybrid)")


@pytest.mark.parametrize(("argv", "message"), [
    (["bench", "queue", "--sizes", "0"],
     "kvspec bench queue: argument --sizes: pool sizes, comma-separated: expected a whole "
     "number of at least 1, got 0 (see kvspec bench queue --help)"),
    (["bench", "queue", "--sizes", "1000,-5"],
     "kvspec bench queue: argument --sizes: pool sizes, comma-separated: expected a whole "
     "number of at least 1, got -5 (see kvspec bench queue --help)"),
    (["bench", "--repeats", "0"],
     "kvspec bench: argument --repeats: expected a whole number of at least 1, got 0 "
     "(see kvspec bench --help)"),
    (["bench", "queue", "--min-time", "nan"],
     "kvspec bench queue: argument --min-time: expected a finite number above 0, got nan "
     "(see kvspec bench queue --help)"),
    (["estimate", "--users-per-min", "nan"],
     "kvspec estimate: argument --users-per-min: expected a finite number of at least 0, "
     "got nan (see kvspec estimate --help)"),
    (["estimate", "--users-per-min", "inf"],
     "kvspec estimate: argument --users-per-min: expected a finite number of at least 0, "
     "got inf (see kvspec estimate --help)"),
    (["estimate", "--lifetime-s", "nan"],
     "kvspec estimate: argument --lifetime-s: expected a finite number of at least 0, "
     "got nan (see kvspec estimate --help)"),
])
def test_bench_and_estimate_refuse_numbers_they_cannot_use(argv, message, capsys,
                                                           empty_folder):
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == message + "\n"
    assert list(empty_folder.iterdir()) == []


def test_a_bad_option_is_one_line_not_the_whole_usage(capsys):
    assert main(["check", "--level", "everything"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kvspec check: argument --level: invalid choice: 'everything'")
    assert err.count("\n") == 1


@pytest.mark.parametrize("bench", ["queue", "pool", "store", "upstream", "check", "prove"])
def test_every_benchmark_refuses_a_bad_option_in_one_line(bench, capsys):
    assert main(["bench", bench, "--no-such-option"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (f"kvspec bench {bench}: unrecognized arguments: --no-such-option "
                   f"(see kvspec bench {bench} --help)\n")


@pytest.mark.parametrize(("target", "message"), [
    ("broken_factories:half_a_pool", "returned a HalfAPool, which lacks the PoolTarget"),
    ("nosuchmodule:f", "cannot import module 'nosuchmodule'"),
])
def test_replay_checks_the_target_before_replaying(target, message, capsys, empty_folder):
    trace = empty_folder / "t.json"
    trace.write_text('{"format": "kvspec-trace", "version": 1, "level": "pool", '
                     '"config": {"num_blocks": 4}, "steps": []}')
    err = refused(["replay", "t.json", "--target", target], capsys, empty_folder)
    assert message in err


def test_replay_of_a_missing_file_says_so(capsys, empty_folder):
    err = refused(["replay", "nowhere.json"], capsys, empty_folder)
    assert err == "kvspec replay: nowhere.json: cannot read it (No such file or directory)"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_refuses_an_unknown_option_with_status_2(command, capsys, empty_folder):
    assert main([command, "--no-such-option"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"kvspec {command}: ") and err.count("\n") == 1


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_stopped_by_ctrl_c_exits_130_with_one_line(command, capsys, monkeypatch):
    import importlib

    def interrupted(_args: object) -> int:
        print("partial work")
        raise KeyboardInterrupt

    monkeypatch.setattr(importlib.import_module(COMMANDS[command][0]), "run", interrupted)
    argv = {"replay": ["replay", "t.json"], "show": ["show", "t.json", "--html", "t.html"],
            "fuzz": ["fuzz", "--target", "impl"]}.get(command, [command])
    assert main(argv) == 130
    out, err = capsys.readouterr()
    assert out == "partial work\n"
    assert err == f"kvspec {command}: interrupted\n"


def test_kvspec_spec_and_no_command_exit_0(capsys):
    assert main(["spec"]) == 0
    assert "Invariants:" in capsys.readouterr().out
    assert main([]) == 0
