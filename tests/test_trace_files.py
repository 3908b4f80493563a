"""Trace files: anything malformed is refused with one line naming the step and the field,
never misread; ``kvspec replay`` says what both sides refused."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kvspec.conformance.cli import main
from kvspec.conformance.trace import Trace, TraceError

HEAD = {"format": "kvspec-trace", "version": 1}


def pool(steps: Any, **config: Any) -> dict[str, Any]:
    return {**HEAD, "level": "pool", "config": {"num_blocks": 4, **config}, "steps": steps}


def manager(steps: Any, **config: Any) -> dict[str, Any]:
    return {**HEAD, "level": "manager", "config": {"num_blocks": 4, "block_size": 2, **config},
            "steps": steps}


ALLOC = {"op": "get_new_blocks", "args": {"num_blocks": 1}}
ADD = {"op": "add_request", "args": {"request_id": "a", "prompt_token_ids": [1, 2, 3]}}

MALFORMED: list[tuple[str, Any, str]] = [
    ("top-level-array", [1, 2],
     "not a kvspec-trace file: the top level is a list [1, 2], expected an object"),
    ("top-level-string", "trace",
     "not a kvspec-trace file: the top level is a string 'trace', expected an object"),
    ("step-not-object", pool([ALLOC, 7]),
     'step 2: expected an object {"op": ..., "args": {...}}, got a number 7'),
    ("no-config", {**HEAD, "level": "pool", "steps": [ALLOC]},
     "config: missing; a trace records the configuration it ran at"),
    ("no-num-blocks", {**HEAD, "config": {}, "steps": [ALLOC]}, "config: num_blocks: missing"),
    ("num-blocks-0", pool([ALLOC], num_blocks=0),
     "config: num_blocks: expected a whole number from 1 to 1048576, got a number 0"),
    ("num-blocks-negative", pool([ALLOC], num_blocks=-3),
     "config: num_blocks: expected a whole number from 1 to 1048576, got a number -3"),
    ("num-blocks-1e12", pool([ALLOC], num_blocks=10**12),
     "config: num_blocks: expected a whole number from 1 to 1048576, got a number "
     "1000000000000"),
    ("num-blocks-true", pool([ALLOC], num_blocks=True),
     "config: num_blocks: expected a whole number from 1 to 1048576, got a boolean True"),
    ("unknown-profile", pool([ALLOC], profile="newest"),
     "config: profile: unknown profile 'newest'; expected one of ['current', 'classic']"),
    ("unknown-mode", pool([ALLOC], mode="lenient"),
     "config: mode: unknown mode 'lenient'; expected one of ['strict', 'abstract']"),
    ("caching-as-string", pool([ALLOC], enable_caching="no"),
     "config: enable_caching: expected true or false, got a string 'no'"),
    ("unknown-config-field", pool([ALLOC], num_block=4),
     "config: unknown field(s) ['num_block'] for a pool trace"),
    ("non-hex-hash", pool([ALLOC, {"op": "cache_block",
                                   "args": {"block_id": 1, "block_hash": "zz"}}]),
     "step 2: cache_block: block_hash: expected a hex string, got a string 'zz'"),
    ("missing-argument", pool([{"op": "cache_block", "args": {"block_id": 1}}]),
     "step 1: cache_block: missing argument(s) ['block_hash']"),
    ("string-count", pool([{"op": "get_new_blocks", "args": {"num_blocks": "2"}}]),
     "step 1: get_new_blocks: num_blocks: expected a whole number, got a string '2'"),
    ("true-block-id", pool([ALLOC, {"op": "fork_block", "args": {"block_id": True}}]),
     "step 2: fork_block: block_id: expected a whole number, got a boolean True"),
    ("true-in-id-list", pool([ALLOC, {"op": "free_blocks", "args": {"block_ids": [True]}}]),
     "step 2: free_blocks: block_ids: expected a list of whole numbers, got a boolean True "
     "in the list"),
    ("float-count", pool([{"op": "get_new_blocks", "args": {"num_blocks": 1.5}}]),
     "step 1: get_new_blocks: num_blocks: expected a whole number, got a number 1.5"),
    ("args-not-object", pool([{"op": "touch", "args": [1]}]),
     "step 1: touch: args: expected an object, got a list [1]"),
    ("unknown-step-field", pool([{"op": "touch", "arg": {"block_ids": [1]}}]),
     "step 1: unknown field(s) ['arg']; a step has 'op' and 'args'"),
    ("unknown-op", pool([{"op": "explode"}]),
     "step 1: unknown operation a string 'explode'; expected one of"),
    ("manager-block-size-0", manager([ADD], block_size=0),
     "config: block_size: expected a whole number from 1 to 1048576, got a number 0"),
    ("manager-string-token-count",
     manager([ADD, {"op": "allocate_slots", "args": {"request_id": "a", "num_new_tokens": "3"}}]),
     "step 2: allocate_slots: num_new_tokens: expected a whole number, got a string '3'"),
    ("manager-no-block-size", {**HEAD, "level": "manager", "config": {"num_blocks": 4},
                               "steps": [ADD]},
     "config: block_size: missing"),
    ("content-store-dtype", {**HEAD, "level": "content",
                             "config": {"num_blocks": 4, "store": {"dtype": "int8"}},
                             "steps": []},
     "config: store: dtype: unknown dtype 'int8'; expected one of"),
    ("content-store-too-big", {**HEAD, "level": "content",
                               "config": {"num_blocks": 1 << 20, "store": {"head_size": 4096}},
                               "steps": []},
     "config: a store of 17,179,869,184 K/V elements; at most 67,108,864"),
    ("no-steps", {**HEAD, "level": "pool", "config": {"num_blocks": 4}},
     "steps: missing; a trace is a list of steps"),
    ("steps-object", pool({}), "steps: expected a list, got an object {}"),
    ("note-not-string", {**pool([ALLOC]), "note": 5}, "note: expected a string, got a number 5"),
    ("unknown-level", {**pool([ALLOC]), "level": "cluster"}, "unknown trace level 'cluster'"),
]


@pytest.mark.parametrize(("data", "message"), [(d, m) for _, d, m in MALFORMED],
                         ids=[name for name, _, _ in MALFORMED])
def test_a_malformed_trace_is_refused_naming_the_step_and_field(data, message):
    with pytest.raises(TraceError) as refused:
        Trace.loads(json.dumps(data))
    assert str(refused.value).startswith(message)
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize(("raw", "message"), [
    (b'{"format": "\xff\xfe"}', "not UTF-8 text (byte 0xff at offset 12)"),
    (b"{", "not JSON (Expecting property name"),
    (b"1" * 5000, "not JSON (Exceeds the limit"),
    (b"[" * 100_000, "not a trace: JSON nested too deeply"),
])
def test_bytes_that_are_not_a_json_trace_are_refused(raw, message):
    with pytest.raises(TraceError, match="^" + re.escape(message)):
        Trace.loads(raw)


@pytest.mark.parametrize(("data", "message"), [(d, m) for _, d, m in MALFORMED[:6]],
                         ids=[name for name, _, _ in MALFORMED[:6]])
def test_kvspec_replay_refuses_a_malformed_trace_in_one_line(data, message, tmp_path, capsys):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    assert main(["replay", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"kvspec replay: {path}: {message}") and err.count("\n") == 1


def test_a_trace_of_no_steps_is_the_fresh_state_alone_and_says_so(tmp_path, capsys):
    path = tmp_path / "fresh.json"
    path.write_text(json.dumps(pool([])))
    assert main(["replay", str(path)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        "OK: no divergence: the trace has no steps, and the fresh states agree")


def test_replay_says_which_steps_both_sides_refused(tmp_path, capsys):
    path = tmp_path / "refusals.json"
    path.write_text(json.dumps(pool([
        ALLOC,
        {"op": "touch", "args": {"block_ids": [9]}},  # out of range
        {"op": "get_new_blocks", "args": {"num_blocks": 10**30}},
        {"op": "free_blocks", "args": {"block_ids": [1]}},
    ])))
    assert main(["replay", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1:] == [
        "  step 2: refused by both, as the spec requires",
        "  step 3: refused by both, as the spec requires",
        "OK: no divergence in 4 steps",
    ]


def test_a_saved_trace_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    trace = Trace.loads(json.dumps(pool([ALLOC])))
    path = trace.save(tmp_path / "t.json")
    assert Trace.load(path) == trace

    def interrupted(*_args: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("os.replace", interrupted)
    longer = Trace.loads(json.dumps(pool([ALLOC, ALLOC])))
    with pytest.raises(KeyboardInterrupt):
        longer.save(path)
    assert Trace.load(path) == trace  # the old file, whole
    assert [p.name for p in tmp_path.iterdir()] == ["t.json"]  # no temporary left behind


# ---------------------------------------------------------------- the loader, fuzzed

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)

VALID = [
    pool([ALLOC, {"op": "cache_block", "args": {"block_id": 1, "block_hash": "61"}},
          {"op": "fork_block", "args": {"block_id": 1}},
          {"op": "free_blocks", "args": {"block_ids": [1]}}]),
    manager([ADD, {"op": "get_computed_blocks", "args": {"request_id": "a"}},
             {"op": "allocate_slots", "args": {"request_id": "a", "num_new_tokens": 3}}]),
    {**HEAD, "level": "hybrid",
     "config": {"num_blocks": 6, "groups": [["full", 2, None], ["sliding", 2, 2]]},
     "steps": [{"op": "add_request", "args": {"request_id": "a", "prompt_token_ids": [1, 2]}},
               {"op": "get_computed_blocks", "args": {"request_id": "a"}},
               {"op": "allocate_slots", "args": {"request_id": "a", "num_new_tokens": 2,
                                                 "new_computed_blocks": [[], []]}}]},
]


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a JSON value (keys and indices), the value itself first."""
    found = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            found += paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found += paths(v, (*prefix, i))
    return found


@st.composite
def near_valid(draw: st.DrawFn) -> Any:
    """A valid trace with one place replaced by any JSON value, or one key dropped."""
    data = copy.deepcopy(draw(st.sampled_from(VALID)))
    where = draw(st.sampled_from(paths(data)[1:]))
    parent = data
    for key in where[:-1]:
        parent = parent[key]
    if draw(st.booleans()) and isinstance(parent, dict):
        del parent[where[-1]]
    else:
        parent[where[-1]] = draw(JSON)
    return data


def loads_cleanly(raw: str | bytes) -> Trace | None:
    """The loader's contract: a trace, or a one-line TraceError; nothing else escapes."""
    try:
        trace = Trace.loads(raw)
    except TraceError as refused:
        assert str(refused) and "\n" not in str(refused)
        return None
    assert Trace.from_json(trace.to_json()) == trace  # what it read, it can write back
    return trace


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(JSON, near_valid()))
def test_any_json_value_is_a_trace_or_a_clean_refusal(data):
    loads_cleanly(json.dumps(data))


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=64),
                 st.builds(lambda data, i, b: _flip(data, i, b),
                           st.sampled_from(VALID), st.integers(0, 10**6), st.integers(0, 255))))
def test_any_bytes_are_a_trace_or_a_clean_refusal(raw):
    loads_cleanly(raw)


def _flip(data: Any, index: int, byte: int) -> bytes:
    raw = bytearray(json.dumps(data).encode())
    raw[index % len(raw)] = byte
    return bytes(raw)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(near_valid())
def test_a_trace_the_loader_accepts_replays_to_a_verdict(data):
    """A trace that loads is never misread: replaying it on kvspec's own allocator ends in
    a verdict (agree, diverge, or outside the checked scope), not in an exception."""
    from kvspec.conformance.engines.replay import replay_trace

    trace = loads_cleanly(json.dumps(data))
    if trace is not None:
        result = replay_trace(trace, "impl")
        assert result.ok or result.divergence is not None or result.outside_scope is not None


def test_the_examples_above_are_valid_traces(tmp_path: Path):
    for data in VALID:
        assert loads_cleanly(json.dumps(data)) is not None


def test_replay_refuses_a_content_trace_whose_device_is_not_here(tmp_path, capsys):
    pytest.importorskip("torch")
    path = tmp_path / "content.json"
    path.write_text(json.dumps({**HEAD, "level": "content", "steps": [],
                                "config": {"num_blocks": 4, "store": {"device": "bogus"}}}))
    assert main(["replay", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"kvspec replay: {path}: device 'bogus' is not available")
