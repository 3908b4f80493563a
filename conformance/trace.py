"""The ``kvspec-trace`` file format: a versioned, replayable sequence of operations.

A trace is the durable form of a failure. Hypothesis's own reproduction blobs are tied
to its version; a trace is plain JSON that ``kvspec replay`` runs on the spec and on any
target, without Hypothesis. The z3 model checker writes the same format.

Format (version 1)::

    {
      "format": "kvspec-trace",
      "version": 1,
      "level": "pool",
      "config": {"num_blocks": 4, "enable_caching": true, "profile": "current"},
      "steps": [
        {"op": "get_new_blocks", "args": {"num_blocks": 2}},
        {"op": "cache_block", "args": {"block_id": 1, "block_hash": "6131", "parent": null}},
        {"op": "free_blocks", "args": {"block_ids": [2, 1]}}
      ],
      "note": "free text: where it came from, what broke"
    }

Pool-level operations and their ``args`` (the target protocol's names):
``get_new_blocks{num_blocks}``, ``touch{block_ids}``, ``free_blocks{block_ids}``,
``cache_block{block_id, block_hash, parent?}``, ``get_cached_block{block_hash}``,
``reset_prefix_cache{}``, ``fork_block{block_id}``. Hashes are hex strings. Block ids
are concrete: the ids the spec hands out in strict mode.

Manager-level operations (``"level": "manager"``, :mod:`kvspec.conformance.manager.protocol`;
config ``num_blocks, block_size, enable_caching, profile, compare_hashes``):
``add_request{request_id, prompt_token_ids, lora_name?, cache_salt?}``,
``append_output_tokens{request_id, token_ids}``,
``set_num_computed_tokens{request_id, num_computed_tokens}``,
``get_computed_blocks{request_id}``, ``allocate_slots{request_id, num_new_tokens,
num_new_computed_tokens?, new_computed_blocks?, num_lookahead_tokens?}``,
``free{request_id}``, ``preempt{request_id}``, ``reset_prefix_cache{}``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvspec.conformance.errors import UsageError
from kvspec.spec.profiles import PROFILES

TRACE_FORMAT = "kvspec-trace"
TRACE_VERSION = 1

POOL_OPS: dict[str, tuple[str, ...]] = {
    "get_new_blocks": ("num_blocks",),
    "touch": ("block_ids",),
    "free_blocks": ("block_ids",),
    "cache_block": ("block_id", "block_hash", "parent"),
    "get_cached_block": ("block_hash",),
    "reset_prefix_cache": (),
    "fork_block": ("block_id",),
}

MANAGER_OPS: dict[str, tuple[str, ...]] = {
    "add_request": ("request_id", "prompt_token_ids", "lora_name", "cache_salt"),
    "append_output_tokens": ("request_id", "token_ids"),
    "set_num_computed_tokens": ("request_id", "num_computed_tokens"),
    "get_computed_blocks": ("request_id",),
    "allocate_slots": (
        "request_id",
        "num_new_tokens",
        "num_new_computed_tokens",
        "new_computed_blocks",
        "num_lookahead_tokens",
    ),
    "free": ("request_id",),
    "preempt": ("request_id",),
    "reset_prefix_cache": (),
}

_HASH_ARGS = ("block_hash", "parent")


class TraceError(UsageError):
    """A trace file that cannot be read: wrong format, version, or operation."""


@dataclass
class Step:
    """One operation. ``args`` hold Python values (hashes as ``bytes``)."""

    op: str
    args: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        args = {
            k: (v.hex() if k in _HASH_ARGS and isinstance(v, bytes) else v)
            for k, v in self.args.items()
        }
        return {"op": self.op, "args": args}

    @classmethod
    def from_json(cls, data: Any, ops: dict[str, tuple[str, ...]], *, where: str = "step",
                  level: str = "pool") -> Step:
        """One step of a trace file, every argument checked (see :data:`ARG_KINDS`)."""
        if not isinstance(data, dict):
            raise TraceError(f"{where}: expected an object {{\"op\": ..., \"args\": {{...}}}}, "
                             f"got {_shown(data)}")
        extra = set(data) - {"op", "args"}
        if extra:
            raise TraceError(f"{where}: unknown field(s) {sorted(map(str, extra))}; a step has "
                             "'op' and 'args'")
        op = data.get("op")
        if not isinstance(op, str) or op not in ops:
            raise TraceError(f"{where}: unknown operation {_shown(op)}; expected one of "
                             f"{sorted(ops)}")
        raw = data.get("args", {})
        if not isinstance(raw, dict):
            raise TraceError(f"{where}: {op}: args: expected an object, got {_shown(raw)}")
        unknown = set(raw) - set(ops[op])
        if unknown:
            raise TraceError(f"{where}: {op}: unknown argument(s) {sorted(unknown)}")
        args: dict[str, Any] = {}
        kinds = {**ARG_KINDS, **LEVEL_ARG_KINDS.get(level, {})}
        for name, value in raw.items():
            args[name] = _checked_arg(value, kinds.get(name, "any"), f"{where}: {op}: {name}")
        missing = [n for n in ops[op] if n not in args and n not in OPTIONAL_ARGS.get(op, ())]
        if missing:
            raise TraceError(f"{where}: {op}: missing argument(s) {missing}")
        return cls(op, args)

    def describe(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self.args.items() if v is not None)
        return f"{self.op}({shown})"


@dataclass
class Trace:
    level: str
    config: dict[str, Any]
    steps: list[Step]
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "format": TRACE_FORMAT,
            "version": TRACE_VERSION,
            "level": self.level,
            "config": self.config,
            "steps": [s.to_json() for s in self.steps],
            "note": self.note,
        }

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2) + "\n"

    def save(self, path: str | Path) -> Path:
        """Write the trace; atomically, so that an interrupted run leaves no half a file."""
        from kvspec.conformance.report import write_atomically

        return write_atomically(Path(path), self.dumps())

    @classmethod
    def from_json(cls, data: Any) -> Trace:
        """A trace from its JSON value, checked field by field: anything malformed raises
        :class:`TraceError` naming the field (and the step), never a misread trace."""
        if not isinstance(data, dict):
            raise TraceError(f"not a {TRACE_FORMAT} file: the top level is {_shown(data)}, "
                             "expected an object")
        if data.get("format") != TRACE_FORMAT:
            raise TraceError(f"not a {TRACE_FORMAT} file (format={data.get('format')!r})")
        if data.get("version") != TRACE_VERSION:
            raise TraceError(
                f"trace version {data.get('version')!r} is not supported "
                f"(this kvspec reads version {TRACE_VERSION})"
            )
        level = data.get("level", "pool")
        if not isinstance(level, str):
            raise TraceError(f"level: expected a string, got {_shown(level)}")
        ops = _ops_for_level(level)
        if "config" not in data:
            raise TraceError("config: missing; a trace records the configuration it ran at")
        config = _checked_config(data["config"], level)
        if "steps" not in data:
            raise TraceError("steps: missing; a trace is a list of steps (an empty list: the "
                             "fresh state alone)")
        raw_steps = data["steps"]
        if not isinstance(raw_steps, list):
            raise TraceError(f"steps: expected a list, got {_shown(raw_steps)}")
        steps = [Step.from_json(s, ops, where=f"step {i}", level=level)
                 for i, s in enumerate(raw_steps, 1)]
        note = data.get("note", "")
        if not isinstance(note, str):
            raise TraceError(f"note: expected a string, got {_shown(note)}")
        return cls(level, config, steps, note)

    @classmethod
    def loads(cls, text: str | bytes) -> Trace:
        """A trace from a file's contents (UTF-8 JSON)."""
        if isinstance(text, bytes):
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise TraceError(f"not UTF-8 text (byte {exc.object[exc.start]:#04x} at "
                                 f"offset {exc.start})") from None
        try:
            data = json.loads(text)
        except ValueError as exc:  # JSONDecodeError, or an integer too long to convert
            raise TraceError(f"not JSON ({exc})") from None
        except RecursionError:
            raise TraceError("not a trace: JSON nested too deeply") from None
        return cls.from_json(data)

    @classmethod
    def load(cls, path: str | Path) -> Trace:
        """A trace from a file (:meth:`loads`); ``OSError`` when it cannot be read."""
        return cls.loads(Path(path).read_bytes())


#: The largest pool a trace may configure: far above any pool kvspec's engines use (a
#: handful of blocks) and far below one whose bookkeeping would exhaust memory.
MAX_TRACE_BLOCKS = 1 << 20
#: The largest block store (K and V elements) a content trace may configure, for the same
#: reason.
MAX_STORE_ELEMENTS = 1 << 26
PROFILE_NAMES = tuple(PROFILES)
MODES = ("strict", "abstract")
#: The content level's store dtypes (kvspec.conformance.content.values.DTYPES, which needs
#: torch; the loader does not).
STORE_DTYPES = ("float32", "float16", "bfloat16")

#: What each argument of every level's operations holds. ``int``: a whole number (never a
#: boolean: JSON ``true`` is not block 1); ``ints``: a list of them; ``hash``: a hex string;
#: ``str``: a string; a trailing ``?`` also allows ``null``.
ARG_KINDS: dict[str, str] = {
    # pool
    "num_blocks": "int", "block_ids": "ints", "block_id": "int", "block_hash": "hash",
    "parent": "hash?",
    # manager
    "request_id": "str", "prompt_token_ids": "ints", "lora_name": "str?", "cache_salt": "str?",
    "token_ids": "ints", "num_computed_tokens": "int", "num_new_tokens": "int",
    "num_new_computed_tokens": "int", "new_computed_blocks": "ints",
    "num_lookahead_tokens": "int",
    # content
    "prompt": "ints", "request": "int", "token": "int",
}
#: Where a level's argument holds something else: the hybrid level's hits are one list of
#: block ids per KV-cache group.
LEVEL_ARG_KINDS: dict[str, dict[str, str]] = {
    "hybrid": {"new_computed_blocks": "int-lists", "num_external_computed_tokens": "int"},
}
#: Arguments a step may leave out (the operation's default applies).
OPTIONAL_ARGS: dict[str, tuple[str, ...]] = {
    "cache_block": ("parent",),
    "add_request": ("lora_name", "cache_salt"),
    "allocate_slots": ("num_new_computed_tokens", "new_computed_blocks",
                       "num_lookahead_tokens", "num_external_computed_tokens"),
}


def _shown(value: Any) -> str:
    """A value for an error message: its JSON type and a short repr."""
    kinds = {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
             int: "a number", float: "a number", type(None): "null"}
    text = repr(value)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{kinds.get(type(value), type(value).__name__)} {text}"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _checked_arg(value: Any, kind: str, where: str) -> Any:
    if kind.endswith("?"):
        if value is None:
            return None
        kind = kind[:-1]
    if kind == "int" and _is_int(value):
        return value
    if kind == "ints" and isinstance(value, list) and all(_is_int(v) for v in value):
        return value
    if kind == "int-lists" and isinstance(value, list) and all(
            isinstance(v, list) and all(_is_int(i) for i in v) for v in value):
        return value
    if kind == "str" and isinstance(value, str):
        return value
    if kind == "hash" and isinstance(value, str):
        try:
            return bytes.fromhex(value)
        except ValueError:
            raise TraceError(f"{where}: expected a hex string, got {_shown(value)}") from None
    if kind == "any":
        return value
    expected = {"int": "a whole number", "ints": "a list of whole numbers",
                "int-lists": "a list of lists of whole numbers", "str": "a string",
                "hash": "a hex string"}[kind]
    if kind == "ints" and isinstance(value, list):
        bad = next(v for v in value if not _is_int(v))
        raise TraceError(f"{where}: expected {expected}, got {_shown(bad)} in the list")
    raise TraceError(f"{where}: expected {expected}, got {_shown(value)}")


def _field(data: dict[str, Any], name: str, where: str, *, kind: type, default: Any = None,
           choices: tuple[Any, ...] = (), low: int = 1, high: int | None = None) -> Any:
    if name not in data:
        if default is None:
            raise TraceError(f"{where}{name}: missing")
        return default
    value = data[name]
    if kind is int:
        if not _is_int(value) or value < low or (high is not None and value > high):
            bound = f"from {low} to {high}" if high is not None else f"of at least {low}"
            raise TraceError(f"{where}{name}: expected a whole number {bound}, got "
                             f"{_shown(value)}")
    elif not isinstance(value, kind):
        expected = {bool: "true or false", str: "a string"}[kind]
        raise TraceError(f"{where}{name}: expected {expected}, got {_shown(value)}")
    if choices and value not in choices:
        raise TraceError(f"{where}{name}: unknown {name} {value!r}; expected one of "
                         f"{list(choices)}")
    return value


def _checked_groups(groups: Any) -> None:
    """A hybrid config's KV-cache groups: ``[kind, block_size, sliding_window or null]``."""
    if not isinstance(groups, list) or not groups:
        raise TraceError(f"config: groups: expected a non-empty list of [kind, block_size, "
                         f"window or null], got {_shown(groups)}")
    for i, group in enumerate(groups, 1):
        ok = (isinstance(group, list) and len(group) == 3 and isinstance(group[0], str)
              and _is_int(group[1]) and 1 <= group[1] <= MAX_TRACE_BLOCKS
              and (group[2] is None or (_is_int(group[2]) and group[2] >= 1)))
        if not ok:
            raise TraceError(f"config: groups: group {i}: expected [kind, block_size >= 1, "
                             f"window >= 1 or null], got {_shown(group)}")
    from kvspec.spec.errors import Refused
    from kvspec.spec.hybrid import GroupSpec, check_groups

    try:
        check_groups([GroupSpec(*group) for group in groups])
    except Refused as exc:
        raise TraceError(f"config: groups: {' '.join(str(exc).split())}") from None


def _checked_config(config: Any, level: str) -> dict[str, Any]:
    """The ``config`` object of a ``level`` trace, each field checked."""
    if not isinstance(config, dict):
        raise TraceError(f"config: expected an object, got {_shown(config)}")
    known = {"num_blocks", "enable_caching", "profile", "mode"}
    where = "config: "
    _field(config, "num_blocks", where, kind=int, high=MAX_TRACE_BLOCKS)
    _field(config, "enable_caching", where, kind=bool, default=True)
    _field(config, "profile", where, kind=str, default="current", choices=PROFILE_NAMES)
    _field(config, "mode", where, kind=str, default="strict", choices=MODES)
    if level == "manager":
        known |= {"block_size", "compare_hashes"}
        _field(config, "block_size", where, kind=int, high=MAX_TRACE_BLOCKS)
        _field(config, "compare_hashes", where, kind=bool, default=True)
    if level == "hybrid":
        known |= {"groups", "compare_hashes"}
        _field(config, "compare_hashes", where, kind=bool, default=True)
        _checked_groups(config.get("groups"))
    if level == "content":
        known.add("store")
        store = config.get("store", {})
        if not isinstance(store, dict):
            raise TraceError(f"config: store: expected an object, got {_shown(store)}")
        where = "config: store: "
        size = 2 * config["num_blocks"]
        for name, default in (("block_size", 2), ("num_layers", 1), ("num_kv_heads", 1),
                              ("head_size", 4)):
            size *= _field(store, name, where, kind=int, default=default, high=1 << 16)
        if size > MAX_STORE_ELEMENTS:
            raise TraceError(f"config: a store of {size:,} K/V elements; at most "
                             f"{MAX_STORE_ELEMENTS:,}")
        _field(store, "dtype", where, kind=str, default="float32", choices=STORE_DTYPES)
        _field(store, "device", where, kind=str, default="cpu")
        extra = set(store) - {"block_size", "num_layers", "num_kv_heads", "head_size",
                              "dtype", "device"}
        if extra:
            raise TraceError(f"config: store: unknown field(s) {sorted(extra)}")
    extra = set(config) - known
    if extra:
        raise TraceError(f"config: unknown field(s) {sorted(extra)} for a {level} trace")
    return dict(config)


# Levels register their operation tables here (the manager level adds its own).
#: Content-level actions (conformance/content/driver.py): scheduler actions whose pool and
#: store calls the replay repeats; ``request`` is the id the trace's own actions created.
CONTENT_OPS: dict[str, tuple[str, ...]] = {
    "admit": ("prompt",),
    "decode": ("request", "token"),
    "fork": ("request",),
    "free": ("request",),
    "readmit": ("request",),
    "reset": (),
}

#: Hybrid-level operations (conformance/hybrid/protocol.py): the manager's, hits per group,
#: and a KV connector's external computed tokens on ``allocate_slots``.
HYBRID_OPS: dict[str, tuple[str, ...]] = {
    **{op: args for op, args in MANAGER_OPS.items() if op != "add_request"},
    "add_request": ("request_id", "prompt_token_ids"),
    "allocate_slots": (*MANAGER_OPS["allocate_slots"], "num_external_computed_tokens"),
}

LEVEL_OPS: dict[str, dict[str, tuple[str, ...]]] = {
    "pool": POOL_OPS,
    "manager": MANAGER_OPS,
    "content": CONTENT_OPS,
    "hybrid": HYBRID_OPS,
}


def _ops_for_level(level: str) -> dict[str, tuple[str, ...]]:
    if level not in LEVEL_OPS:
        raise TraceError(f"unknown trace level {level!r}; expected one of {sorted(LEVEL_OPS)}")
    return LEVEL_OPS[level]
