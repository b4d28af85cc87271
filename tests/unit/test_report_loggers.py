"""The report's metrics as the trainer's loggers get them (``report/loggers.py``)."""

import math

import numpy as np
from helpers import as_frames, known_readings

from nequip_spectral.config import SpectralProbeConfig
from nequip_spectral.report import build_report
from nequip_spectral.report.loggers import report_metrics


def test_each_heads_ridge_strength_is_logged_under_that_heads_name():
    """``spectral/alpha/b<b>/<head>`` carries that head's own ridge strength (a distinct one
    per head and backbone; null, i.e. infinite, as inf), heads in the order the solver gives
    them (``probe.heads``: l = 0, 2, 3, their null heads null2, null3, the control)."""
    l_values = (0, 2, 3)
    heads = [head.name for head in SpectralProbeConfig(l_values=l_values).heads((0, None), "e")]
    assert heads == ["e_l0", "e_l2", "e_l3", "e_null2", "e_null3", "e_none"]  # solver's order
    readings = np.full((2, 5), 0.5)  # two backbones; heads l = 0, 2, 3, null2, null3
    report = build_report(as_frames(*known_readings(readings, readings), l_values, ("forces",)))
    assert report["null_heads"]
    report["solver"]["alpha_e"] = [[1e-3, 1e-2, 1e-1, 1.0, None, 1e2],
                                   [2e-3, 2e-2, 2e-1, 2.0, 2e1, None]]  # fmt: skip
    metrics = report_metrics(report)
    logged = {(b, head[2:]): metrics[f"spectral/alpha/b{b}/{head}"] for b in (0, 1)
              for head in heads}  # fmt: skip
    assert logged == {
        (0, "l0"): 1e-3, (0, "l2"): 1e-2, (0, "l3"): 1e-1,
        (0, "null2"): 1.0, (0, "null3"): math.inf, (0, "none"): 1e2,
        (1, "l0"): 2e-3, (1, "l2"): 2e-2, (1, "l3"): 2e-1,
        (1, "null2"): 2.0, (1, "null3"): 2e1, (1, "none"): math.inf,
    }  # fmt: skip
    assert "spectral/alpha/b0/e_null0" not in metrics  # s_0 has no direction: no null head
