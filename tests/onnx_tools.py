"""The check of a ``verify --json`` report of an exported graph that each architecture's ONNX
test makes: a passing run per engine and batch (4), Logits within the bound, top-1 and top-5
agreeing on every one of the 10 photos."""
from __future__ import annotations

import json
from pathlib import Path


def assert_onnx_report_passes(report: Path) -> dict:
    """The report's data, after the checks above (each run's Logits printed)."""
    data = json.loads(Path(report).read_text())
    assert data["passed"] and data["format"] == "onnx" and len(data["runs"]) == 4
    for engine in ("ONNX Runtime", "OpenVINO"):
        for batch in (1, 10):
            assert sum(label.startswith(engine) and label.endswith(f"batch {batch}")
                       for label in data["runs"]) == 1, (engine, batch, list(data["runs"]))
    for label, run in data["runs"].items():
        logits = run["end_points"]["Logits"]
        print(f"ONNX {label}: Logits max |diff| {logits['max_abs_diff']:.3g} "
              f"(bound {logits['bound']:.3g})")
        assert logits["passed"] and logits["top1_agree"] == logits["top5_agree"] == 10
    return data
