"""The report dictionary (``spectral_report.json``): the spectrum, the cliff and their
bootstrap intervals from the test set's per-frame sums."""

from pathlib import Path

import numpy as np

from ..config import SpectralProbeConfig
from ..heads import KINDS
from ..theory.bootstrap import choose_block_length, lag1_autocorrelation, summarize
from ..theory.metrics import (
    READINGS,
    bootstrap_spectrum,
    frame_contrast,
    null_floor,
    spectrum,
)
from .frames import FrameSums

METRICS = ("rho", "R2_inj", "gain", "rho_recovered", "rho_chance")
QUESTIONS = {  # what each spectrum's heads were fitted to, and so what its numbers answer
    "energy": "heads fitted to energies alone: how much of the injected degree-l energy is a "
    "degree-d_r function of the tapped features",
    "forces": "heads fitted to energies and forces: how much of the injected degree-l force "
    "field is the gradient of such a function, through the backbone's Jacobian",
}


def backbone_name(path: str) -> str:
    """A backbone by its run: ``runs/bb4/0/best.ckpt`` -> ``bb4/0``."""
    return "/".join(Path(path).parts[-3:-1]) or str(path)


def _finite(x):
    return None if x is None or not np.isfinite(x) else float(x)


def build_report(
    frames: FrameSums,
    n_bootstrap: int | None = None,
    block_length: int | None = None,
    frame_order: str = "source",
) -> dict:
    """The report dictionary (``spectral_report.json``) from the test set's per-frame sums.

    With several taps (``feature_tap: layers``), the report of the last tap (the one
    ``auto`` reads) with ``layers``: every tap's own report (its ``L``, ceiling, null floor
    and cliff), in the order the network computes them.

    Args:
        frames: the per-frame sums and their context (the probe block, ``L``, the kinds, the
            solver summary; the kinds' first one, forces when measured, is behind ``rho``,
            the cliff and the contrasts)
        n_bootstrap: bootstrap replicates (default: the run's)
        block_length: frames per bootstrap block (default: the run's setting, which is
            ``None`` for a length chosen from the data)
        frame_order: ``source`` (blocks of frames consecutive in the trajectory) or
            ``loader`` (the order the test loader gave, for comparison)
    """
    if len(frames.taps) > 1:  # the last tap's report, with every tap's as its layers
        layers = [build_report(frames.at_tap(t), n_bootstrap, block_length, frame_order)
                  for t in range(len(frames.taps))]  # fmt: skip
        taps = [tap["name"] for tap in frames.taps]
        return {**layers[-1], "layers": [{"tap": tap, "report": report}
                                         for tap, report in zip(taps, layers, strict=True)]}
    context = frames.context
    probe = SpectralProbeConfig.from_block(context["probe"])
    kinds = tuple(context["kinds"])
    head, control = frames.in_order(frame_order)
    primary = kinds[0]
    per_kind = {
        kind: spectrum(head[:, :, k].sum(1), control[:, :, k].sum(1))  # (backbones, l)
        for k, kind in enumerate(kinds)
    }

    num_l, nulls = len(probe.l_values), probe.null_l_values
    with_null = bool(nulls) and head.shape[-2] == num_l + len(nulls)  # (after the l heads)

    def per_l(values_of):  # {"4": {"rho": .., "R2_inj_forces": .., ...}}
        table = {}
        for i, l in enumerate(probe.l_values):
            row = {"rho": _finite(values_of("rho", primary)[i])}
            for metric in METRICS:
                for kind in KINDS:
                    row[f"{metric}_{kind}"] = (
                        _finite(values_of(metric, kind)[i]) if kind in per_kind else None
                    )
            for metric in READINGS if with_null and l in nulls else ():  # its null head's
                for kind in kinds:
                    j = num_l + nulls.index(l)
                    row[f"null_{metric}_{kind}"] = _finite(values_of(metric, kind)[j])
            table[str(l)] = row
        return table

    boundary = probe.degree * context["L"]
    report = {
        "L": context["L"],
        "degree": probe.degree,
        "boundary": boundary,
        "l_values": list(probe.l_values),
        "n_backbones": len(probe.backbones),
        "n_test_frames": int(head.shape[1]),
        "target": probe.target,
        "primary": primary,
        "spectra": {kind: QUESTIONS[kind] for kind in kinds},
        "solver": {"name": probe.solver, **context["solver"]},
        "amplitude": probe.amplitude,
        "channels": probe.channels,
        "activation": probe.activation,
        "head_parameters": context["head_parameters"],
        "null_heads": with_null,
        # where 95% of readings with nothing to recover fall, from the null head of every l
        "null_floor": {
            f"{metric}_{kind}": null_floor(per_kind[kind][metric][:, num_l:].mean(0))
            for metric in ("rho", "rho_recovered")
            for kind in kinds
        }
        if with_null
        else None,
        "per_l": per_l(lambda m, kind: per_kind[kind][m].mean(0)),
        "per_l_std": per_l(lambda m, kind: per_kind[kind][m].std(0)),
        "per_backbone": [
            {"path": path, "per_l": per_l(lambda m, kind, b=b: per_kind[kind][m][b])}
            for b, path in enumerate(probe.backbones)
        ],
    }
    if with_null:
        report["floor_check"] = _floor_check(report, kinds)

    above = boundary + 1
    if boundary not in probe.l_values or above not in probe.l_values:
        message = f"l_values must contain {boundary} and {above}"
        report["cliff"] = {"note": message}
        report["bootstrap"] = {"note": f"not run: {message}"}
        return report
    a, b = probe.l_values.index(boundary), probe.l_values.index(above)
    rho_a, rho_b = report["per_l"][str(boundary)]["rho"], report["per_l"][str(above)]["rho"]
    defined = rho_a is not None and rho_b is not None and rho_b > 0
    report["cliff"] = {
        "rho_boundary": rho_a,
        "rho_above": rho_b,
        "ratio": rho_a / rho_b if defined else None,
        "note": None if defined else "not defined: rho_above <= 0",
    }

    contrast = frame_contrast(head[:, :, 0], a, b)  # the per-frame Delta, in frame order
    block_length = block_length or context["block_length"]
    chosen_by = "set"
    if block_length is None:
        block_length = choose_block_length(contrast)
        chosen_by = "arch optimal_block_length (circular) of the per-frame Delta"
    n_bootstrap = n_bootstrap or context["n_bootstrap"]
    replicates = bootstrap_spectrum(head, control, a, b, block_length, n_bootstrap, seed=probe.seed)
    if frame_order == "source" and not frames.sources_known:
        frame_order = "loader (the frames' sources are unknown)"
    report["bootstrap"] = {
        "replicates": n_bootstrap,
        "block_length": block_length,
        "block_length_chosen_by": chosen_by,
        "frame_order": frame_order,
        "lag1_autocorrelation": _finite(lag1_autocorrelation(contrast)),
        "seed": probe.seed,
    }
    for l, row in report["per_l"].items():
        i = probe.l_values.index(int(l))
        for k, kind in enumerate(kinds):
            for metric in READINGS:
                row[f"{metric}_{kind}_ci95"] = summarize(replicates[metric][:, k, i])["ci95"]
                if with_null and int(l) in nulls:
                    null = replicates[metric][:, k, num_l + nulls.index(int(l))]
                    row[f"null_{metric}_{kind}_ci95"] = summarize(null)["ci95"]
        row["rho_ci95"] = row[f"rho_{primary}_ci95"]
    gain, rho = per_kind[primary]["gain"].mean(0), per_kind[primary]["rho"].mean(0)
    for name, estimate in (("delta", gain[a] - gain[b]), ("rho_diff", rho[a] - rho[b])):
        report[name] = {"estimate": _finite(estimate), **summarize(replicates[name][:, 0])}
    report["cliff"].update(_ratio_interval(replicates["rho_a"][:, 0], replicates["rho_b"][:, 0]))
    return report



def _floor_check(report: dict, kinds) -> dict:
    """The readings above the ceiling, which by the span theorem have nothing to recover: per
    kind, how many there are and how many ``rec`` values lie below and above the null floor
    (a second sample of the null: about 5% should lie outside)."""
    check = {}
    for kind in kinds:
        low, high = report["null_floor"][f"rho_recovered_{kind}"]
        values = [row[f"rho_recovered_{kind}"] for l, row in report["per_l"].items()
                  if int(l) > report["boundary"] and row[f"rho_recovered_{kind}"] is not None]
        check[kind] = {"readings": len(values)}  # fmt: skip
        if low is not None:
            check[kind]["below"] = sum(value < low for value in values)
            check[kind]["above"] = sum(value > high for value in values)
    return check


def _ratio_interval(rho_a: np.ndarray, rho_b: np.ndarray) -> dict:
    """95% interval of the cliff ``rho_a / rho_b`` over bootstrap replicates. A replicate with
    ``rho_b <= 0`` has an unbounded ratio (no power recovered above the ceiling), so the upper
    end may be unbounded (``null``)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(rho_b > 0, rho_a / rho_b, np.inf)
    low, high = np.percentile(ratio, [2.5, 97.5], method="inverted_cdf")
    return {
        "ratio_ci95": [_finite(low), _finite(high)],
        "ratio_unbounded_fraction": float(np.mean(rho_b <= 0)),
    }

