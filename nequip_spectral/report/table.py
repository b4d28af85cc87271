"""The per-``l`` table printed at the end of test."""

import textwrap

from ..heads import KINDS
from .build import backbone_name

WIDTH = 120  # columns of the printed table
KEY = (
    "key: rho = heads' gain over the control per injected power; rec = rho less its chance part "
    "(read this); null = rec of",
    "     the null head (nothing to recover); R2inj = R^2 on the injection; ~ rec reaches into "
    "the null floor; * chance > rec",
)


def number(value, width=0, digits=3) -> str:
    """``value`` in at most 8 characters (``n/a``: undefined): large ones in powers of ten."""
    if value is None:
        text = "n/a"
    elif abs(value) < 1000:
        text = f"{value:.{digits}f}"
    else:
        text = f"{value:.1e}".replace("e+0", "e").replace("e+", "e")
    return f"{text:>{width}}"


def floor_mark(report: dict, row: dict, kind: str) -> str:
    """``~`` where a ``rec`` interval reaches into the null floor (not told apart from chance),
    ``!`` where it lies wholly below it (the heads fitted what the test frames do not share),
    else ``" "``."""
    value = row.get(f"rho_recovered_{kind}")
    low, high = row.get(f"rho_recovered_{kind}_ci95") or [value, value]
    floor = (report.get("null_floor") or {}).get(f"rho_recovered_{kind}") or [None, None]
    if None in (value, low, high, *floor):
        return " "
    return "!" if high < floor[0] else "~" if low <= floor[1] else " "


FLOOR_NOTES = {  # (~ is in the key)
    "!": "! rec's interval lies below the null floor: the heads fitted something of the "
    "fitting frames that the test frames do not share (test frames from another part of the "
    "trajectory, or too few fitting frames for the features); no recovery, and not a "
    "property of the backbone",
}


def layer_lines(report: dict) -> list[str]:
    """With several taps: each tap's ``rec`` per ``l`` (both spectra), marked against the
    tap's own null floor, ``|`` after its own ceiling, and its cliff."""
    layers = report.get("layers")
    if not layers:
        return []
    ls = list(report["per_l"])
    width = max(len(layer["tap"]) for layer in layers)
    lines = ["per layer (each tap's own heads; the rows above: the last tap's): rec, ~ in its "
             "null floor, | after its d_r L"]  # fmt: skip
    for kind in report["spectra"]:
        lines.append(f"  {'rec_' + kind[0].upper():<{width}}  L" + "".join(
            f"{'l=' + l:>9}" for l in ls) + "    cliff")  # fmt: skip
        for layer in layers:
            tapped = layer["report"]
            cells = "".join(
                f"{number(row.get(f'rho_recovered_{kind}'), 8)}{floor_mark(tapped, row, kind)}"
                + ("|" if int(l) == tapped["boundary"] else " ")
                for l, row in tapped["per_l"].items()
            )
            ratio = tapped["cliff"].get("ratio")
            cliff = "n/a" if ratio is None else f"{ratio:.1f}"
            lines.append(f"  {layer['tap']:<{width}} {tapped['L']:>2}{cells} {cliff:>7}")
    return lines


def format_table(report: dict) -> str:
    """The per-``l`` table printed at the end of test."""
    lines = [
        f"spectral probe: L = {report['L']}, d_r = {report['degree']}, ceiling d_r L = "
        f"{report['boundary']}; {report['n_backbones']} backbone(s), {report['n_test_frames']} "
        f"test frames, target {report['target']}; cliff on {report['primary']}",
        f"{'l':>3}" + "".join(
            f" {'rho_' + k:>9} {'95% CI':>16} {'rec_' + k:>7} {'null_' + k:>7} "
            f"{'R2inj_' + k:>8}" for k in "FE"),
    ]  # fmt: skip
    force_rows = report["solver"].get("force_rows")
    if force_rows:
        atoms, rows = (" to ".join(map(str, dict.fromkeys(force_rows[k])))
                       for k in ("atoms", "per_frame"))  # fmt: skip
        how = "every component" if force_rows["all_components"] else "a random sketch"
        lines.insert(1, f"force rows: {rows} a frame of {atoms} atoms, {how} "
                        f"(force_directions: {force_rows['setting']})")  # fmt: skip

    cell = number

    def interval(bounds, width=0, digits=3):
        if bounds is None:
            return f"{'':>{width}}"
        low, high = (number(b, 0, digits if b is None or abs(b) < 10 else 1) for b in bounds)
        return f"{f'[{low}, {high}]':>{width}}"

    floor_marks = set()

    def reading(row, kind):  # rho, marked * where its chance part outweighs the recovered one
        rho, chance = row[f"rho_{kind}"], row.get(f"rho_chance_{kind}")
        part = row.get(f"rho_recovered_{kind}")
        mark = chance is not None and part is not None and abs(chance) > abs(part)
        return f"{cell(rho, 8)}{'*' if mark else ' '}"

    def recovered(row, kind):  # rec, marked against the null floor
        mark = floor_mark(report, row, kind)
        floor_marks.add(mark)
        return f"{cell(row.get(f'rho_recovered_{kind}'), 6)}{mark}"

    for l, row in report["per_l"].items():
        mark = "  <- ceiling" if int(l) == report["boundary"] else ""
        lines.append(f"{l:>3}" + "".join(
            f" {reading(row, kind)} {interval(row.get(f'rho_{kind}_ci95'), 16)} "
            f"{recovered(row, kind)} {cell(row.get(f'null_rho_recovered_{kind}'), 7)} "
            f"{cell(row[f'R2_inj_{kind}'], 8)}" for kind in ("forces", "energy")) + mark
        )  # fmt: skip
    if report.get("null_floor"):
        floor = report["null_floor"]
        spans = ", ".join(f"rec_{kind[0].upper()} {interval(floor[f'rho_recovered_{kind}'])}"
                          for kind in KINDS if f"rho_recovered_{kind}" in floor)  # fmt: skip
        lines.append(f"null floor (95% of readings with nothing to recover, from the null "
                     f"heads): {spans}")  # fmt: skip
        checks = [f"rec_{kind[0].upper()} {check['below'] + check['above']} of "
                  f"{check['readings']}" for kind, check in report.get("floor_check", {}).items()
                  if "below" in check]  # fmt: skip
        if checks:
            lines.append("above the ceiling (nothing to recover, by the span theorem), outside "
                         f"the null floor: {', '.join(checks)}")  # fmt: skip
    lines += [note for mark, note in FLOOR_NOTES.items() if mark in floor_marks]
    if report["n_backbones"] > 1:
        lines.append(f"rho ({report['primary']}) per backbone:")
        for b, backbone in enumerate(report["per_backbone"]):
            values = " ".join(cell(row["rho"], 7) for row in backbone["per_l"].values())
            lines.append(f"  b{b} {values}  {backbone_name(backbone['path'])}")
    cliff = report["cliff"]
    if "rho_boundary" in cliff:
        ratio = cliff["ratio"]
        if ratio is None:  # undefined: no interval to give either
            bounds = ""
        elif cliff["ratio_ci95"][0] is None:
            bounds = ", 95% CI unbounded (no replicate recovers anything above)"
        else:
            bounds = f", 95% CI {interval(cliff['ratio_ci95'], 0, 1).replace('n/a', 'unbounded')}"
        lines.append(
            f"cliff rho({report['boundary']}) / rho({report['boundary'] + 1}) = "
            + (f"{ratio:.1f}" if ratio is not None else f"n/a ({cliff['note']})")
            + bounds
            + f"  [rho {cell(cliff['rho_boundary'])} -> {cell(cliff['rho_above'])}]"
        )
        primary, rows = report["primary"], report["per_l"]
        lines.append(f"recovered ({primary}, rho without its chance part): " + " -> ".join(
            f"rec({l}) = {cell(rows[str(l)][f'rho_recovered_{primary}'])} "
            f"{interval(rows[str(l)].get(f'rho_recovered_{primary}_ci95'))}"
            for l in (report["boundary"], report["boundary"] + 1)
        ))  # fmt: skip
        for name in ("delta", "rho_diff"):
            stats = report[name]
            lines.append(
                f"{name} ({report['primary']}) = {cell(stats.get('estimate'), 0, 4)}, 95% CI "
                f"{interval(stats['ci95'], 0, 4)}, fraction <= 0: {cell(stats['frac_le_0'])}"
            )
        bootstrap = report["bootstrap"]
        lines.append(
            f"bootstrap: {bootstrap['replicates']} replicates, backbones then blocks of "
            f"{bootstrap['block_length']} test frame{'s' * (bootstrap['block_length'] != 1)} in "
            f"{bootstrap['frame_order']} order "
            f"(block length {bootstrap['block_length_chosen_by']}; lag-1 autocorrelation of "
            f"the per-frame Delta {cell(bootstrap['lag1_autocorrelation'])})"
        )
    lines += layer_lines(report) + list(KEY)
    return "\n".join(
        textwrap.fill(line, WIDTH, subsequent_indent="    ", break_on_hyphens=False)
        if len(line) > WIDTH else line for line in lines
    )  # fmt: skip

