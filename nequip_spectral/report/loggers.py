"""The report to the trainer's loggers (TensorBoard, Weights & Biases, CSV...), under
``spectral/``: the per-``l`` readings of both spectra, Delta and its interval, the cliff and the
chosen ridge strengths as metrics (with several taps, each tap's under ``spectral/TAP/``), and
the spectrum's picture to loggers that take images."""

import math

from ..config import SpectralProbeConfig

PREFIX = "spectral"


def report_metrics(report: dict) -> dict:
    """``{"spectral/rho_forces/l4": 0.62, ...}``: every number of the report worth a curve."""
    metrics = {}
    for l, row in report["per_l"].items():
        for name, value in row.items():
            if isinstance(value, list):  # an interval
                for end, bound in zip(("low", "high"), value, strict=True):
                    metrics[f"{PREFIX}/{name}_{end}/l{l}"] = bound
            else:
                metrics[f"{PREFIX}/{name}/l{l}"] = value
    for name in ("delta", "rho_diff"):
        if name in report:
            metrics[f"{PREFIX}/{name}"] = report[name].get("estimate", report[name]["mean"])
            metrics[f"{PREFIX}/{name}_low"], metrics[f"{PREFIX}/{name}_high"] = report[name][
                "ci95"
            ]
    metrics[f"{PREFIX}/cliff"] = report["cliff"].get("ratio")
    probe = SpectralProbeConfig(l_values=tuple(report["l_values"]))  # (the closed form's heads)
    for key, per_backbone in report["solver"].items():
        if key.startswith("alpha_"):  # the closed form's ridge strength of each head
            fit = key.removeprefix("alpha_")
            for b, alphas in enumerate(per_backbone):
                for head, alpha in zip(probe.heads((b, None), fit), alphas, strict=True):
                    metrics[f"{PREFIX}/alpha/b{b}/{head.name}"] = (
                        math.inf if alpha is None else alpha  # null: no feature weight
                    )
    for layer in report.get("layers", []):  # spectral/layer1_convnet/rho_forces/l4, ...
        for name, value in report_metrics(layer["report"]).items():
            metrics[name.replace(PREFIX, f"{PREFIX}/{layer['tap']}", 1)] = value
    return {name: float(value) for name, value in metrics.items() if value is not None}


def log_report(loggers, report: dict, figure_path, step: int) -> None:
    """:func:`report_metrics` to every logger, and the picture to those that take images."""
    metrics = report_metrics(report)
    for logger in loggers:
        logger.log_metrics(metrics, step=step)
        if hasattr(logger, "log_image"):  # Weights & Biases, Neptune, ...
            logger.log_image(key=f"{PREFIX}/spectrum", images=[str(figure_path)], step=step)
        elif hasattr(getattr(logger, "experiment", None), "add_image"):  # TensorBoard
            import matplotlib.image

            image = matplotlib.image.imread(figure_path)
            logger.experiment.add_image(f"{PREFIX}/spectrum", image, step, dataformats="HWC")
