"""The per-``l`` table printed at the end of test."""

from .build import backbone_name


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

