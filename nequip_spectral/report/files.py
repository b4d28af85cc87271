"""The report's files: ``spectral_report.json``, ``.csv`` and ``.png``."""

import csv
import json
from pathlib import Path

import numpy as np

from ..heads import KINDS
from ..theory.metrics import READINGS
from .build import METRICS, _finite
from .plot import plot_spectrum

REPORT_FILES = ("spectral_report.json", "spectral_report.csv", "spectral_report.png")
_CI_COLUMNS = [f"{m}_{kind}_ci95" for m in READINGS for kind in KINDS]


def _json_safe(value):
    """The report with every non-finite number as ``None`` (``null``: standard JSON)."""
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    if isinstance(value, (float, np.floating)):
        return _finite(value)
    return value



def write_report(report: dict, output_dir) -> None:
    """Write ``spectral_report.json``, ``.csv`` (a row per backbone and ``l``, then the mean
    over backbones with its intervals) and ``.png``."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / REPORT_FILES[0]).write_text(json.dumps(_json_safe(report), indent=2))
    columns = [f"{m}_{kind}" for m in METRICS for kind in KINDS]
    bounds = [f"{name}_{end}" for name in _CI_COLUMNS for end in ("low", "high")]
    rows = [
        (b, backbone["path"], backbone["per_l"])
        for b, backbone in enumerate(report["per_backbone"])
    ]
    with open(output_dir / REPORT_FILES[1], "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["backbone", "path", "l", *columns, *bounds])
        for b, path, per_l in [*rows, ("mean", "", report["per_l"])]:
            for l, row in per_l.items():
                ci = [end for name in _CI_COLUMNS for end in (row.get(name) or [None, None])]
                writer.writerow([b, path, l, *(row[c] for c in columns), *ci])
    plot_spectrum(report, output_dir / REPORT_FILES[2])

