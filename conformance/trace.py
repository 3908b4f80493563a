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


class TraceError(ValueError):
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
    def from_json(cls, data: dict[str, Any], ops: dict[str, tuple[str, ...]]) -> Step:
        op = data.get("op")
        if op not in ops:
            raise TraceError(f"unknown operation {op!r}; expected one of {sorted(ops)}")
        args = dict(data.get("args", {}))
        unknown = set(args) - set(ops[op])
        if unknown:
            raise TraceError(f"{op}: unknown argument(s) {sorted(unknown)}")
        for k in _HASH_ARGS:
            if isinstance(args.get(k), str):
                args[k] = bytes.fromhex(args[k])
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
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.dumps())
        return path

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Trace:
        if data.get("format") != TRACE_FORMAT:
            raise TraceError(f"not a {TRACE_FORMAT} file (format={data.get('format')!r})")
        if data.get("version") != TRACE_VERSION:
            raise TraceError(
                f"trace version {data.get('version')!r} is not supported "
                f"(this kvspec reads version {TRACE_VERSION})"
            )
        level = data.get("level", "pool")
        ops = _ops_for_level(level)
        steps = [Step.from_json(s, ops) for s in data.get("steps", [])]
        return cls(level, dict(data.get("config", {})), steps, data.get("note", ""))

    @classmethod
    def load(cls, path: str | Path) -> Trace:
        try:
            data = json.loads(Path(path).read_text())
        except json.JSONDecodeError as exc:
            raise TraceError(f"{path}: not JSON ({exc})") from None
        return cls.from_json(data)


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
