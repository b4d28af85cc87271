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
from ..theory.metrics import frame_sums, hierarchical_bootstrap, spectrum

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
    head: np.ndarray,
    control: np.ndarray,
    probe: SpectralProbeConfig,
    L: int,
    head_parameters: int,
    n_bootstrap: int = 2000,
    block_length: int = 10,
    seed: int = 0,
    kinds=KINDS,
    solver: dict | None = None,
) -> dict:
    """The report dictionary (``spectral_report.json``) from the per-frame sums of the test set.

    Args:
        head: ``(backbones, frames, kinds, l_values, 6)`` per-frame head sums
        control: ``(backbones, frames, kinds, 3)`` per-frame control sums
        L: degree of the tapped features
        head_parameters: trainable parameters (closed form: features) of one SPN head
        kinds: the spectra measured, in the order of the sums' kind axis; the first one
            (forces when measured) is behind ``rho``, the cliff and the bootstrap
        solver: what the solver reports (closed form: the ridge strength of every head)
    """
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

    boundary = probe.degree * L
    report = {
        "L": L,
        "degree": probe.degree,
        "boundary": boundary,
        "l_values": list(probe.l_values),
        "n_backbones": len(probe.backbones),
        "n_test_frames": int(head.shape[1]),
        "target": probe.target,
        "primary": primary,
        "spectra": {kind: QUESTIONS[kind] for kind in kinds},
        "solver": {"name": probe.solver, **(solver or {})},
        "amplitude": probe.amplitude,
        "channels": probe.channels,
        "activation": probe.activation,
        "head_parameters": head_parameters,
        "per_l": per_l(lambda m, kind: per_kind[kind][m].mean(0)),
        "per_l_std": per_l(lambda m, kind: per_kind[kind][m].std(0)),
        "per_backbone": [
            {"path": path, "per_l": per_l(lambda m, kind, b=b: per_kind[kind][m][b])}
            for b, path in enumerate(probe.backbones)
        ],
    }

    above = boundary + 1
    if boundary in probe.l_values and above in probe.l_values:
        rho_a = report["per_l"][str(boundary)]["rho"]
        rho_b = report["per_l"][str(above)]["rho"]
        defined = rho_a is not None and rho_b is not None and rho_b > 0
        report["cliff"] = {
            "rho_boundary": rho_a,
            "rho_above": rho_b,
            "ratio": rho_a / rho_b if defined else None,
            "note": None if defined else "not defined: rho_above <= 0",
        }
        bootstrap = hierarchical_bootstrap(
            head[:, :, 0],
            control[:, :, 0],
            probe.l_values.index(boundary),
            probe.l_values.index(above),
            n_replicates=n_bootstrap,
            block_length=block_length,
            seed=seed,
        )
        report.update(_json_safe(bootstrap))
    else:
        report["cliff"] = {"note": f"l_values must contain {boundary} and {above}"}
    return report


def format_table(report: dict) -> str:
    """The per-``l`` table printed at the end of test."""
    lines = [
        f"spectral probe: L = {report['L']}, degree d_r = {report['degree']}, predicted ceiling "
        f"l* = {report['boundary']}; {report['n_backbones']} backbone(s), "
        f"{report['n_test_frames']} test frames, target {report['target']}; "
        f"rho, cliff and bootstrap on {report['primary']}",
        f"{'l':>3} {'rho_F':>8} {'R2inj_F':>8} {'gain_F':>10} {'rho_E':>8} {'R2inj_E':>8} "
        f"{'gain_E':>10}",
    ]

    def cell(value, width=0, digits=3):
        return f"{'n/a':>{width}}" if value is None else f"{value:>{width}.{digits}f}"

    for l, row in report["per_l"].items():
        mark = "  <- ceiling" if int(l) == report["boundary"] else ""
        lines.append(
            f"{l:>3} {cell(row['rho_forces'], 8, 3)} {cell(row['R2_inj_forces'], 8, 3)} "
            f"{cell(row['gain_forces'], 10, 6)} {cell(row['rho_energy'], 8, 3)} "
            f"{cell(row['R2_inj_energy'], 8, 3)} {cell(row['gain_energy'], 10, 6)}{mark}"
        )
    cliff = report["cliff"]
    if "rho_boundary" in cliff:
        ratio = cliff["ratio"]
        lines.append(
            f"cliff rho({report['boundary']}) / rho({report['boundary'] + 1}) = "
            + (f"{ratio:.1f}" if ratio is not None else f"n/a ({cliff['note']})")
            + f"  [rho {cell(cliff['rho_boundary'])} -> {cell(cliff['rho_above'])}]"
        )
        for name in ("delta", "rho_diff"):
            stats = report[name]
            low, high = stats["ci95"]
            lines.append(
                f"{name} ({report['primary']}) = {cell(stats['mean'], 0, 4)}, 95% CI "
                f"[{cell(low, 0, 4)}, {cell(high, 0, 4)}], fraction <= 0: "
                f"{cell(stats['frac_le_0'])}"
            )
    return "\n".join(lines)


def write_report(report: dict, output_dir) -> None:
    """Write ``spectral_report.json``, ``.csv`` (a row per backbone and ``l``) and ``.png``."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / REPORT_FILES[0]).write_text(json.dumps(_json_safe(report), indent=2))
    columns = [f"{m}_{kind}" for m in METRICS for kind in KINDS]
    with open(output_dir / REPORT_FILES[1], "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["backbone", "path", "l", *columns])
        for b, backbone in enumerate(report["per_backbone"]):
            for l, row in backbone["per_l"].items():
                writer.writerow([b, backbone["path"], l, *(row[c] for c in columns)])
    plot_spectrum(report, output_dir / REPORT_FILES[2])


def plot_spectrum(report: dict, path) -> None:
    """rho and R2_inj per ``l`` (forces and energies) with the predicted ceiling marked.

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
            err = None
            if report["n_backbones"] > 1:
                err = [report["per_l_std"][str(l)][key] or 0.0 for l in ls]
            shown = np.clip(mean, *_Y_RANGE)
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
    names = ", ".join(Path(b["path"]).name for b in report["per_backbone"])
    fig.suptitle(
        f"Spectrum of {report['n_backbones']} backbone(s) ({names}), L = {report['L']}, "
        f"d_r = {report['degree']}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
