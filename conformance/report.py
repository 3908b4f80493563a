"""Failure reports people can use: numbered steps, side-by-side views, a pytest function."""

from __future__ import annotations

import json
from pathlib import Path

from kvspec.conformance.pool.driver import Divergence

DEFAULT_TRACE_DIR = Path(".kvspec") / "traces"


def format_steps(failure: Divergence) -> str:
    lines = []
    for i, step in enumerate(failure.steps, start=1):
        marker = "  <-- diverges here" if i == len(failure.steps) else ""
        lines.append(f"  {i:>3}. {step.describe()}{marker}")
    if not failure.steps:
        lines.append("    (the fresh pool already disagrees)")
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


def pytest_function(failure: Divergence, target: str) -> str:
    """A regression test to paste: it replays the trace and expects no divergence."""
    trace_json = json.dumps(failure.trace().to_json(), indent=4)
    body = "\n".join("        " + line for line in trace_json.splitlines())
    return (
        "def test_kvspec_regression():\n"
        '    """Found by kvspec check: ' + failure.caught_by + '."""\n'
        "    import json\n\n"
        "    from conformance.engines.replay import replay_trace\n"
        "    from conformance.trace import Trace\n\n"
        "    trace = Trace.from_json(json.loads(r\"\"\"\n"
        f"{body}\n"
        "    \"\"\"))\n"
        f"    result = replay_trace(trace, target={target!r})\n"
        "    assert result.ok, result.message\n"
    )


def write_failure(failure: Divergence, target: str, out_dir: Path = DEFAULT_TRACE_DIR) -> tuple[
    Path, Path
]:
    """Write the trace (JSON) and the pytest function; return both paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{target.replace(':', '_').replace('.', '_').replace('/', '_')}-{failure.caught_by}"
    trace_path = failure.trace().save(out_dir / f"{stem}.json")
    test_path = out_dir / f"test_{stem.replace('-', '_')}.py"
    test_path.write_text(pytest_function(failure, target))
    return trace_path, test_path


def format_failure(failure: Divergence) -> str:
    return (
        f"caught by: {failure.caught_by}\n"
        f"{failure.message}\n\n"
        f"minimal sequence ({len(failure.steps)} steps, config {failure.config.to_json()}):\n"
        f"{format_steps(failure)}\n\n"
        f"observations after the last step:\n{format_views(failure)}"
    )
