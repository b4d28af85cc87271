"""The spectrum report: per-frame sums of a test batch, the metrics, the table and the files."""

import csv
import json
from pathlib import Path

import numpy as np
import torch
from nequip.data import AtomicDataDict

from .._keys import SPECTRUM_FIT, head_name
from ..config import SpectralProbeConfig
from ..targets import FIELDS, KINDS, head_target
from ..theory.bootstrap import choose_block_length, lag1_autocorrelation, summarize
from ..theory.metrics import bootstrap_spectrum, frame_contrast, frame_sums, spectrum
from .frames import FrameSums

REPORT_FILES = ("spectral_report.json", "spectral_report.csv", "spectral_report.png")
_Y_RANGE = (-1.0, 1.5)  # the plot's axes; values beyond are drawn on the edge
METRICS = ("rho", "R2_inj", "gain")
QUESTIONS = {  # what each spectrum's heads were fitted to, and so what its numbers answer
    "energy": "heads fitted to energies alone: how much of the injected degree-l energy is a "
    "degree-d_r function of the tapped features",
    "forces": "heads fitted to energies and forces: how much of the injected degree-l force "
    "field is the gradient of such a function, through the backbone's Jacobian",
}


def batch_frame_sums(outputs, data, probe: SpectralProbeConfig, num_backbones: int, kinds):
    """Per-frame sums of one test batch (see :mod:`nequip_spectral.theory.metrics`), on the CPU.

    Each kind is read from the heads of its spectrum: energies from the ``e`` heads, forces
    from the ``f`` heads.

    Returns:
        ``head`` of shape ``(backbones, frames, kinds, l_values, 6)`` and ``control`` of shape
        ``(backbones, frames, kinds, 3)``, kinds in the order of ``kinds``
    """
    num_frames = AtomicDataDict.num_frames(data)
    positions = data[AtomicDataDict.POSITIONS_KEY]
    atoms_frame = data.get(AtomicDataDict.BATCH_KEY)
    if atoms_frame is None:
        atoms_frame = torch.zeros(len(positions), dtype=torch.long, device=positions.device)
    frame_of = {
        "forces": atoms_frame,
        "energy": torch.arange(num_frames, device=positions.device),
    }

    heads, controls = [], []
    for b in range(num_backbones):
        head_b, control_b = [], []
        for kind in kinds:
            fit = SPECTRUM_FIT[kind]
            control_output = outputs[FIELDS[kind].head(b, head_name(None, fit))].detach()
            if probe.target == "injected":  # yhat_none = 0, so G_none = 0
                control_output = torch.zeros_like(control_output)
            control_target = head_target(outputs, data, b, None, kind, probe.target)
            zero = torch.zeros_like(control_output)
            control_sums = frame_sums(
                control_target, control_output, zero, zero, frame_of[kind], num_frames
            )
            control_b.append(control_sums[:, :3])
            head_b.append(
                torch.stack(
                    [
                        frame_sums(
                            head_target(outputs, data, b, l, kind, probe.target),
                            outputs[FIELDS[kind].head(b, head_name(l, fit))].detach(),
                            control_output,
                            data[FIELDS[kind].injected(l)],
                            frame_of[kind],
                            num_frames,
                        )
                        for l in probe.l_values
                    ],
                    dim=1,
                )
            )
        heads.append(torch.stack(head_b, dim=1))
        controls.append(torch.stack(control_b, dim=1))
    return torch.stack(heads).cpu(), torch.stack(controls).cpu()


def backbone_name(path: str) -> str:
    """A backbone by its run: ``runs/bb4/0/best.ckpt`` -> ``bb4/0``."""
    return "/".join(Path(path).parts[-3:-1]) or str(path)


def _finite(x):
    return None if x is None or not np.isfinite(x) else float(x)


def _json_safe(value):
    """The report with every non-finite number as ``None`` (``null``: standard JSON)."""
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    if isinstance(value, (float, np.floating)):
        return _finite(value)
    return value


def build_report(
    frames: FrameSums,
    n_bootstrap: int | None = None,
    block_length: int | None = None,
    frame_order: str = "source",
) -> dict:
    """The report dictionary (``spectral_report.json``) from the test set's per-frame sums.

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
    context = frames.context
    probe = SpectralProbeConfig.from_block(context["probe"])
    kinds = tuple(context["kinds"])
    head, control = frames.in_order(frame_order)
    primary = kinds[0]
    per_kind = {
        kind: spectrum(head[:, :, k].sum(1), control[:, :, k].sum(1))  # (backbones, l)
        for k, kind in enumerate(kinds)
    }

    def per_l(values_of):  # {"4": {"rho": .., "R2_inj_forces": .., ...}}
        table = {}
        for i, l in enumerate(probe.l_values):
            row = {"rho": _finite(values_of("rho", primary)[i])}
            for metric in METRICS:
                for kind in KINDS:
                    row[f"{metric}_{kind}"] = (
                        _finite(values_of(metric, kind)[i]) if kind in per_kind else None
                    )
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
        "per_l": per_l(lambda m, kind: per_kind[kind][m].mean(0)),
        "per_l_std": per_l(lambda m, kind: per_kind[kind][m].std(0)),
        "per_backbone": [
            {"path": path, "per_l": per_l(lambda m, kind, b=b: per_kind[kind][m][b])}
            for b, path in enumerate(probe.backbones)
        ],
    }

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
            for metric in ("rho", "R2_inj"):
                row[f"{metric}_{kind}_ci95"] = summarize(replicates[metric][:, k, i])["ci95"]
        row["rho_ci95"] = row[f"rho_{primary}_ci95"]
    report["delta"] = summarize(replicates["delta"][:, 0])
    report["rho_diff"] = summarize(replicates["rho_diff"][:, 0])
    report["cliff"].update(_ratio_interval(replicates["rho_a"][:, 0], replicates["rho_b"][:, 0]))
    return report


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


def format_table(report: dict) -> str:
    """The per-``l`` table printed at the end of test."""
    lines = [
        f"spectral probe: L = {report['L']}, degree d_r = {report['degree']}, predicted ceiling "
        f"l* = {report['boundary']}; {report['n_backbones']} backbone(s), "
        f"{report['n_test_frames']} test frames, target {report['target']}; "
        f"rho, cliff and contrasts on {report['primary']}",
        f"{'l':>3} {'rho_F':>8} {'95% CI':>16} {'R2inj_F':>8} {'gain_F':>10} {'rho_E':>8} "
        f"{'95% CI':>16} {'R2inj_E':>8} {'gain_E':>10}",
    ]

    def cell(value, width=0, digits=3):
        return f"{'n/a':>{width}}" if value is None else f"{value:>{width}.{digits}f}"

    def interval(bounds, width=0, digits=3):
        if bounds is None:
            return f"{'':>{width}}"
        return f"{f'[{cell(bounds[0], 0, digits)}, {cell(bounds[1], 0, digits)}]':>{width}}"

    for l, row in report["per_l"].items():
        mark = "  <- ceiling" if int(l) == report["boundary"] else ""
        lines.append(
            f"{l:>3} {cell(row['rho_forces'], 8)} {interval(row.get('rho_forces_ci95'), 16)} "
            f"{cell(row['R2_inj_forces'], 8)} {cell(row['gain_forces'], 10, 6)} "
            f"{cell(row['rho_energy'], 8)} {interval(row.get('rho_energy_ci95'), 16)} "
            f"{cell(row['R2_inj_energy'], 8)} {cell(row['gain_energy'], 10, 6)}{mark}"
        )
    if report["n_backbones"] > 1:
        lines.append(f"rho ({report['primary']}) per backbone:")
        for b, backbone in enumerate(report["per_backbone"]):
            values = " ".join(cell(row["rho"], 7) for row in backbone["per_l"].values())
            lines.append(f"  b{b} {values}  {backbone_name(backbone['path'])}")
    cliff = report["cliff"]
    if "rho_boundary" in cliff:
        ratio = cliff["ratio"]
        lines.append(
            f"cliff rho({report['boundary']}) / rho({report['boundary'] + 1}) = "
            + (f"{ratio:.1f}" if ratio is not None else f"n/a ({cliff['note']})")
            + (
                ", 95% CI unbounded (no replicate recovers anything above)"
                if cliff["ratio_ci95"][0] is None
                else f", 95% CI {interval(cliff['ratio_ci95'], 0, 1).replace('n/a', 'unbounded')}"
            )
            + f"  [rho {cell(cliff['rho_boundary'])} -> {cell(cliff['rho_above'])}]"
        )
        for name in ("delta", "rho_diff"):
            stats = report[name]
            lines.append(
                f"{name} ({report['primary']}) = {cell(stats['mean'], 0, 4)}, 95% CI "
                f"{interval(stats['ci95'], 0, 4)}, fraction <= 0: {cell(stats['frac_le_0'])}"
            )
        bootstrap = report["bootstrap"]
        lines.append(
            f"bootstrap: {bootstrap['replicates']} replicates, backbones then blocks of "
            f"{bootstrap['block_length']} test frames in {bootstrap['frame_order']} order "
            f"(block length {bootstrap['block_length_chosen_by']}; lag-1 autocorrelation of "
            f"the per-frame Delta {cell(bootstrap['lag1_autocorrelation'])})"
        )
    return "\n".join(lines)


_CI_COLUMNS = [f"{m}_{kind}_ci95" for m in ("rho", "R2_inj") for kind in KINDS]


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


def plot_spectrum(report: dict, path) -> None:
    """rho and R2_inj per ``l`` (forces and energies, mean over backbones with the bootstrap's
    95% interval) with the predicted ceiling marked.

    The axes show ``[-1, 1.5]``; a value beyond is drawn on the edge with an open marker.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ls = [int(l) for l in report["per_l"]]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharex=True)
    for ax, metric, title in zip(
        axes, ("rho", "R2_inj"), ("rho: injected power recovered", "R2_inj"), strict=True
    ):
        for kind, marker in (("forces", "o"), ("energy", "s")):
            key = f"{metric}_{kind}"
            mean = [np.nan if (v := report["per_l"][str(l)][key]) is None else v for l in ls]
            shown = np.clip(mean, *_Y_RANGE)
            err = None  # the bootstrap's 95% interval, clipped like the values
            intervals = [report["per_l"][str(l)].get(f"{key}_ci95") for l in ls]
            if all(ci is not None for ci in intervals):
                low, high = (
                    np.clip([np.nan if v is None else v for v in end], *_Y_RANGE)
                    for end in zip(*intervals, strict=True)
                )
                err = np.nan_to_num([shown - low, high - shown]).clip(min=0)
            label = f"{kind.replace('forces', 'force')} spectrum"
            line = ax.errorbar(ls, shown, yerr=err, marker=marker, capsize=3, label=label)
            outside = np.isfinite(mean) & (shown != np.asarray(mean))
            ax.scatter(
                np.asarray(ls)[outside], shown[outside], s=90, marker=marker,
                facecolors="white", edgecolors=line[0].get_color(), zorder=3,
            )  # fmt: skip
        ax.axvline(report["boundary"], color="k", linestyle="--", label="ceiling d_r L")
        ax.axhline(0.0, color="gray", linewidth=0.5)
        ax.set_ylim(_Y_RANGE[0] - 0.05, _Y_RANGE[1] + 0.05)
        ax.set_xlabel("angular frequency l")
        ax.set_title(title)
        ax.set_xticks(ls)
        ax.legend()
    names = ", ".join(backbone_name(b["path"]) for b in report["per_backbone"])
    fig.suptitle(
        f"Spectrum of {report['n_backbones']} backbone(s) ({names}), L = {report['L']}, "
        f"d_r = {report['degree']}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
