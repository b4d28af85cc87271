"""The spectrum's picture: the recovered reading and R2_inj per ``l``, the null floor shaded,
the predicted ceiling marked; with several taps, a heat map of each spectrum's recovered
reading over layer and ``l`` beneath."""

import numpy as np

from .build import backbone_name

_Y_RANGE = (-1.0, 1.5)  # the plot's axes; values beyond are drawn on the edge


def plot_spectrum(report: dict, path) -> None:
    """The recovered reading (``rho_recovered``: rho without its chance part, the calibrated
    reading: chance alone does not raise it) and R2_inj per ``l`` (forces and energies, mean
    over backbones with the bootstrap's 95% interval), each with its null floor shaded (where a
    reading with nothing to recover falls 95% of the time) and the predicted ceiling marked.

    The axes show ``[-1, 1.5]``; a value beyond is drawn on the edge with an open marker.
    With several taps (``layers``), the curves are the last tap's, and beneath them each
    spectrum's recovered reading per tap and ``l`` (:func:`_layer_map`).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ls = [int(l) for l in report["per_l"]]
    layers = report.get("layers")
    fig = plt.figure(figsize=(10, 8 if layers else 4))
    grid = fig.add_gridspec(2 if layers else 1, 2)
    axes = [fig.add_subplot(grid[0, i]) for i in range(2)]
    for i, kind in enumerate(report["spectra"] if layers else ()):
        _layer_map(fig.add_subplot(grid[1, i]), report, kind)
    titles = {"rho_recovered": "injected power recovered (rho less its chance part)",
              "R2_inj": "R2_inj"}  # fmt: skip
    for ax, (metric, title) in zip(axes, titles.items(), strict=True):
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
            floor = (report.get("null_floor") or {}).get(key) or [None, None]
            if None not in floor:
                ax.axhspan(*np.clip(floor, *_Y_RANGE), color=line[0].get_color(), alpha=0.15,
                           label=f"{label}: null floor")  # fmt: skip
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



def _layer_map(ax, report: dict, kind: str) -> None:
    """``rec`` of ``kind`` over tap (rows, in network order) and ``l``: each tap's ceiling a
    black bar after its cell, the cells whose interval reaches into the tap's null floor
    greyed (``~`` in the table)."""
    from matplotlib.patches import Rectangle

    from .table import floor_mark

    layers = report["layers"]
    ls = list(report["per_l"])
    values = np.array([[np.nan if (v := layer["report"]["per_l"][l][f"rho_recovered_{kind}"])
                        is None else v for l in ls] for layer in layers])  # fmt: skip
    image = ax.imshow(values, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    for row, layer in enumerate(layers):
        tapped = layer["report"]
        for column, l in enumerate(ls):
            grey = floor_mark(tapped, tapped["per_l"][l], kind) == "~"
            if grey:
                ax.add_patch(Rectangle((column - 0.5, row - 0.5), 1, 1, color="lightgray"))
            if np.isfinite(value := values[row, column]):
                ax.text(column, row, f"{value:.2f}", ha="center", va="center", fontsize=8,
                        color="black" if grey or value >= 0.5 else "white")  # fmt: skip
            if int(l) == tapped["boundary"]:
                ax.plot([column + 0.5] * 2, [row - 0.5, row + 0.5], color="k", linewidth=3)
    ax.set_xticks(range(len(ls)), ls)
    ax.set_yticks(range(len(layers)), [layer["tap"] for layer in layers])
    ax.set_xlabel("l (bar: the tap's ceiling d_r L; grey: in its null floor)")
    ax.set_title(f"recovered ({kind.replace('forces', 'force')} spectrum) per tap")
    ax.figure.colorbar(image, ax=ax)
