"""``nequip-spectral-compare RUN_DIR... [--labels ...] [--output DIR]``: several runs side by side.

Reads each run's ``spectral_report.json`` (it trains nothing) and writes into ``--output`` one
table, ``spectral_compare.csv`` (a row per ``l``: rho and R2_inj of forces and energies per
run), and one overlay plot, ``spectral_compare.png``, with each run's ceiling ``d_r L`` marked.
"""

import argparse
import csv
import json
from pathlib import Path

import numpy as np

from ..report import REPORT_FILES

COLUMNS = ("rho_forces", "R2_inj_forces", "rho_energy", "R2_inj_energy")
FILES = ("spectral_compare.csv", "spectral_compare.png")


def load_reports(run_dirs) -> list[dict]:
    reports = []
    for run_dir in map(Path, run_dirs):
        path = run_dir / REPORT_FILES[0] if run_dir.is_dir() else run_dir
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: is {run_dir} a probe run directory?")
        reports.append(json.loads(path.read_text()))
    return reports


def comparison_rows(reports: list[dict], labels: list[str]) -> tuple[list[str], list[list]]:
    """The table: a row per ``l`` probed by any run; ``None`` where a run did not probe it."""
    ls = sorted({int(l) for report in reports for l in report["per_l"]})
    header = ["l", *(f"{label}:{column}" for label in labels for column in COLUMNS)]
    rows = [
        [l, *(report["per_l"].get(str(l), {}).get(column) for report in reports
              for column in COLUMNS)]
        for l in ls
    ]  # fmt: skip
    return header, rows


def format_comparison(reports, labels, cell: int = 9) -> str:
    """The table as printed: four columns per run, the ceilings marked."""
    _, rows = comparison_rows(reports, labels)
    names = ("rho_F", "R2inj_F", "rho_E", "R2inj_E")
    lines = [
        "   " + "".join(f"{label[: 4 * cell - 2]:>{4 * cell}}" for label in labels),
        "  l" + "".join(f"{name:>{cell}}" for name in names) * len(labels),
    ]
    for l, *values in rows:
        cells = "".join(f"{'n/a' if v is None else f'{v:.3f}':>{cell}}" for v in values)
        marks = [label for label, report in zip(labels, reports, strict=True)
                 if report["boundary"] == l]  # fmt: skip
        lines.append(f"{l:>3}{cells}" + (f"  <- ceiling of {', '.join(marks)}" if marks else ""))
    return "\n".join(lines)


def plot_comparison(reports, labels, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharex=True, sharey=True)
    for ax, kind in zip(axes, ("forces", "energy"), strict=True):
        for k, (label, report) in enumerate(zip(labels, reports, strict=True)):
            ls = [int(l) for l in report["per_l"]]
            rho = [np.nan if (v := row[f"rho_{kind}"]) is None else v
                   for row in report["per_l"].values()]  # fmt: skip
            (line,) = ax.plot(ls, np.clip(rho, -1.0, 1.5), marker="o", label=label)
            ax.axvline(report["boundary"] + 0.04 * k, color=line.get_color(), linestyle="--",
                       linewidth=1)  # fmt: skip
        ax.axhline(0.0, color="gray", linewidth=0.5)
        ax.set_title(f"rho, {kind.replace('forces', 'force')} spectrum (dashed: d_r L)")
        ax.set_xlabel("angular frequency l")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run_dirs", nargs="+", help="probe run directories (or report files)")
    parser.add_argument("--labels", nargs="+", help="one per run (default: directory names)")
    parser.add_argument("--output", type=Path, default=Path("spectral-compare"),
                        help="directory for the table and plot (default: %(default)s)")
    args = parser.parse_args(argv)
    labels = args.labels or [Path(run).name for run in args.run_dirs]
    if len(labels) != len(args.run_dirs):
        parser.error(f"--labels: {len(labels)} labels for {len(args.run_dirs)} runs")
    existing = [name for name in FILES if (args.output / name).exists()]
    if existing:
        parser.error(f"{args.output} already holds {existing}; choose another --output")
    try:
        reports = load_reports(args.run_dirs)
    except FileNotFoundError as error:
        parser.error(str(error))
    args.output.mkdir(parents=True, exist_ok=True)
    header, rows = comparison_rows(reports, labels)
    with open(args.output / FILES[0], "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    plot_comparison(reports, labels, args.output / FILES[1])
    print(format_comparison(reports, labels))
    print(f"comparison written to {args.output}")


if __name__ == "__main__":
    main()
