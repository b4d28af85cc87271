"""``nequip-spectral-compare RUN_DIR... [--labels ...] [--output DIR]``: several runs side by side.

Reads each run's ``spectral_report.json`` (it trains nothing), prints the calibrated reading
of each run side by side (per ``l``: ``rec`` of forces and energies, marked against the run's
null floor as in the run's own table, and ``R2_inj``; then each run's null floor) and writes
into ``--output`` one table, ``spectral_compare.csv`` (a row per ``l``: rec with its interval,
R2_inj and rho of forces and energies per run), and one overlay plot,
``spectral_compare.png``, with each run's ceiling ``d_r L`` marked. A run of several taps
(``feature_tap: layers``) stands as one run per tap, labelled ``RUN:TAP``.
"""

import csv
import json
from pathlib import Path

import numpy as np

from ..report import REPORT_FILES
from ..report.table import FLOOR_NOTES, KEY, floor_mark, number
from . import command_parser

COLUMNS = tuple(column.format(kind) for kind in ("forces", "energy") for column in (
    "rho_recovered_{}", "rho_recovered_{}_ci95", "R2_inj_{}", "rho_{}"))  # fmt: skip
FILES = ("spectral_compare.csv", "spectral_compare.png")


def load_reports(run_dirs) -> list[dict]:
    reports = []
    for run_dir in map(Path, run_dirs):
        path = run_dir / REPORT_FILES[0] if run_dir.is_dir() else run_dir
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: is {run_dir} a probe run directory?")
        reports.append(json.loads(path.read_text()))
    return reports


def every_tap(reports: list[dict], labels: list[str]) -> tuple[list[dict], list[str]]:
    """The runs with each run of several taps replaced by one per tap (``label:tap``)."""
    expanded = [[(layer["report"], f"{label}:{layer['tap']}") for layer in report["layers"]]
                if "layers" in report else [(report, label)]
                for report, label in zip(reports, labels, strict=True)]  # fmt: skip
    pairs = [pair for run in expanded for pair in run]
    return [report for report, _ in pairs], [label for _, label in pairs]


def probed_l(reports: list[dict]) -> list[int]:
    """Every ``l`` that any of the runs probed, in order."""
    return sorted({int(l) for report in reports for l in report["per_l"]})


def comparison_rows(reports: list[dict], labels: list[str]) -> tuple[list[str], list[list]]:
    """The table: a row per ``l`` probed by any run (an interval as its two ends); ``None``
    where a run did not probe it."""
    ls = probed_l(reports)
    columns = [f"{c}_{end}" if c.endswith("ci95") else c for c in COLUMNS
               for end in (("low", "high") if c.endswith("ci95") else ("",))]  # fmt: skip
    header = ["l", *(f"{label}:{column}" for label in labels for column in columns)]

    def values(row):
        for column in COLUMNS:
            value = row.get(column)
            yield from (value or [None, None]) if column.endswith("ci95") else [value]

    rows = [[l, *(v for report in reports for v in values(report["per_l"].get(str(l), {})))]
            for l in ls]  # fmt: skip
    return header, rows


def format_comparison(reports, labels) -> str:
    """The table as printed, a block per spectrum: per run rho, rec (marked against the run's
    null floor), rec's 95% interval and R2_inj, the ceilings marked; then each run's null
    floor and the key."""
    ls, width = probed_l(reports), 42  # the columns of one run
    lines, marks = [], set()
    for kind in ("forces", "energy"):
        k = kind[0].upper()
        lines += [
            f"{kind.replace('forces', 'force')} spectrum",
            "   " + "".join(f"{label[: width - 2]:>{width}}" for label in labels),
            "  l" + f"{'rho_' + k:>9}{'rec_' + k:>8} {'95% CI':>16}{'R2inj_' + k:>9}" * len(labels),
        ]
        for l in ls:
            cells = ""
            for report in reports:
                row = report["per_l"].get(str(l), {})
                mark = floor_mark(report, row, kind) if row else " "
                marks.add(mark)
                bounds = row.get(f"rho_recovered_{kind}_ci95")
                interval = f"[{number(bounds[0])}, {number(bounds[1])}]" if bounds else ""
                cells += (f"{number(row.get(f'rho_{kind}'), 9)}"
                          f"{number(row.get(f'rho_recovered_{kind}'), 7)}{mark}"
                          f" {interval:>16}{number(row.get(f'R2_inj_{kind}'), 9)}")  # fmt: skip
            ceilings = [label for label, report in zip(labels, reports, strict=True)
                        if report["boundary"] == l]  # fmt: skip
            lines.append(f"{l:>3}{cells}" + (f"  <- ceiling of {', '.join(ceilings)}"
                                             if ceilings else ""))  # fmt: skip
    for label, report in zip(labels, reports, strict=True):
        floor = report.get("null_floor") or {}
        spans = [f"rec_{kind[0].upper()} [{low:.3f}, {high:.3f}]" for kind in ("forces", "energy")
                 if None not in (bounds := floor.get(f"rho_recovered_{kind}") or [None])
                 for low, high in [bounds]]  # fmt: skip
        lines.append(f"null floor of {label}: {', '.join(spans) or 'none (no null heads)'}")
    lines += [note for mark, note in FLOOR_NOTES.items() if mark in marks] + list(KEY)
    return "\n".join(lines)


def plot_comparison(reports, labels, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    low, high = -0.5, 1.05  # rec <= 1; a reading below -0.5 is drawn at it, as a triangle
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharex=True, sharey=True)
    for ax, kind in zip(axes, ("forces", "energy"), strict=True):
        for k, (label, report) in enumerate(zip(labels, reports, strict=True)):
            ls = np.array([int(l) for l in report["per_l"]])
            rec = np.array([np.nan if (v := row[f"rho_recovered_{kind}"]) is None else v
                            for row in report["per_l"].values()])  # fmt: skip
            (line,) = ax.plot(ls, np.clip(rec, low, high), marker="o", label=label)
            clipped = rec < low
            ax.plot(ls[clipped], np.full(clipped.sum(), low), "v", color=line.get_color(),
                    markersize=9)  # fmt: skip
            ax.axvline(report["boundary"] + 0.04 * k, color=line.get_color(), linestyle="--",
                       linewidth=1)  # fmt: skip
        ax.axhline(0.0, color="gray", linewidth=0.5)
        ax.set_ylim(low - 0.05, high + 0.05)
        ax.set_title(f"rec, {kind.replace('forces', 'force')} spectrum (dashed: d_r L; "
                     f"v: below {low})")  # fmt: skip
        ax.set_xlabel("angular frequency l")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_labels(run_dirs) -> list[str]:
    """A label per run: its directory's name, or as many of its last path parts as tell it
    apart from the others (``a/probe``, ``b/probe``)."""
    parts = [Path(run).resolve().parts for run in run_dirs]
    for count in range(1, max(map(len, parts)) + 1):
        labels = ["/".join(p[-count:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    return [f"{p[-1]} ({i})" for i, p in enumerate(parts)]  # the same run given twice


def main(argv=None) -> None:
    parser = command_parser(__doc__)
    parser.add_argument("run_dirs", nargs="+", help="probe run directories (or report files)")
    parser.add_argument("--labels", nargs="+",
                        help="one per run (default: the ends of their paths that differ)")
    parser.add_argument("--output", type=Path, default=Path("spectral-compare"),
                        help="directory for the table and plot (default: %(default)s)")
    args = parser.parse_args(argv)
    labels = args.labels or run_labels(args.run_dirs)
    if len(labels) != len(args.run_dirs):
        parser.error(f"--labels: {len(labels)} labels for {len(args.run_dirs)} runs")
    if len(set(labels)) != len(labels):
        parser.error(f"--labels: each run needs its own label, got {labels}")
    existing = [name for name in FILES if (args.output / name).exists()]
    if existing:
        parser.error(f"{args.output} already holds {existing}; choose another --output")
    try:
        reports = load_reports(args.run_dirs)
    except FileNotFoundError as error:
        parser.error(str(error))
    reports, labels = every_tap(reports, labels)
    args.output.mkdir(parents=True, exist_ok=True)
    header, rows = comparison_rows(reports, labels)
    with open(args.output / FILES[0], "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    plot_comparison(reports, labels, args.output / FILES[1])
    print(format_comparison(reports, labels))
    print(f"comparison written to {args.output}")


if __name__ == "__main__":
    main()
