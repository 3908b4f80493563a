"""Failure reports people can use: numbered steps, both sides after the same step, a trace
file and a pytest function."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from kvspec.conformance.outcome import Divergence

DEFAULT_TRACE_DIR = Path(".kvspec") / "traces"


def format_steps(failure: Divergence) -> str:
    lines = []
    for i, step in enumerate(failure.steps, start=1):
        marker = "  <-- diverges here" if i == len(failure.steps) else ""
        lines.append(f"  {i:>3}. {step.describe()}{marker}")
    if not failure.steps:
        lines.append("    (the fresh state already disagrees)")
    return "\n".join(lines)


def format_views(failure: Divergence) -> str:
    keys = list(dict.fromkeys([*failure.spec_view, *failure.target_view]))
    if not keys:
        return ""
    width = max(len(k) for k in keys)
    rows = [f"  {'':<{width}}  spec / target"]
    for k in keys:
        spec_v = failure.spec_view.get(k, "-")
        target_v = failure.target_view.get(k, "-")
        mark = "   " if spec_v == target_v else " ! "
        rows.append(f"{mark}{k:<{width}}  spec:   {spec_v}")
        rows.append(f"   {'':<{width}}  target: {target_v}")
    return "\n".join(rows)


def format_failure(failure: Divergence, *, how_minimal: str = "") -> str:
    """The report: what caught it, the sequence, and both sides after its last step.

    ``how_minimal`` says what is known of the sequence's length (1-minimal, shortest).
    """
    n = len(failure.steps)
    after = f"after step {n}" if n else "of the fresh state"
    if failure.spec_error:
        head = (f"SPEC ERROR: the spec's own state breaks {failure.caught_by.removeprefix('spec:')}"
                " (a bug in the spec, not in the target)")
        views = f"the spec's state {after}:\n{format_views(failure)}"
    else:
        head = f"caught by: {failure.caught_by}"
        views = f"observations {after}, both sides:\n{format_views(failure)}"
    detail = ""
    if failure.detail:
        calls = "\n".join(f"         {s.describe()}" for s in failure.detail[-6:])
        detail = f"\n  calls made by the last step (latest last):\n{calls}"
    label = f"sequence, {how_minimal}" if how_minimal else "sequence"
    waived = "".join(f"\nnot checked: {name}, {why}" for name, why in failure.waived.items())
    return (
        f"{head}\n"
        f"{failure.message}{waived}\n\n"
        f"{label} ({count_steps(n)}, {failure.level} level, config {failure.config.to_json()}):\n"
        f"{format_steps(failure)}{detail}\n\n"
        f"{views}"
    )


def count_steps(n: int) -> str:
    return f"{n} step" if n == 1 else f"{n} steps"


def pytest_function(failure: Divergence, target: str) -> str:
    """A regression test to paste: it replays the trace and expects no divergence."""
    trace_json = json.dumps(failure.trace().to_json(), indent=4)
    body = "\n".join("        " + line for line in trace_json.splitlines())
    return (
        "def test_kvspec_regression():\n"
        '    """Found by kvspec check: ' + failure.caught_by + '."""\n'
        "    import json\n\n"
        "    from kvspec.conformance.engines.replay import replay_trace\n"
        "    from kvspec.conformance.trace import Trace\n\n"
        "    trace = Trace.from_json(json.loads(r\"\"\"\n"
        f"{body}\n"
        "    \"\"\"))\n"
        f"    result = replay_trace(trace, target={target!r})\n"
        "    assert result.ok, result.message\n"
    )


def write_atomically(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` so that an interrupted run never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def failure_paths(failure: Divergence, target: str, out_dir: Path = DEFAULT_TRACE_DIR
                  ) -> tuple[Path, Path]:
    """Where :func:`write_failure` writes the trace and the pytest function."""
    stem = f"{target.replace(':', '_').replace('.', '_').replace('/', '_')}-{failure.caught_by}"
    stem = stem.replace("spec:", "spec-")
    return out_dir / f"{stem}.json", out_dir / f"test_{stem.replace('-', '_')}.py"


def write_failure(failure: Divergence, target: str, out_dir: Path = DEFAULT_TRACE_DIR
                  ) -> tuple[Path, Path]:
    """Write the trace (JSON) and the pytest function; return both paths."""
    trace_path, test_path = failure_paths(failure, target, out_dir)
    write_atomically(trace_path, failure.trace().dumps())
    write_atomically(test_path, pytest_function(failure, target))
    return trace_path, test_path
