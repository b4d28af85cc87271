"""``nequip-spectral-demo``: train the example backbone, probe it, print the spectrum.

A thin wrapper over the two ``nequip-train`` calls the README spells out, on the bundled
aspirin data, from any directory (the example configs ship with the package)::

    nequip-train -cp "$PWD/example_configs" -cn aspirin_backbone.yaml hydra.run.dir=OUT/backbone
    nequip-train -cp "$PWD/example_configs" -cn aspirin_probe.yaml hydra.run.dir=OUT/probe \\
        'spectral_probe.backbones=[OUT/backbone/best.ckpt]'
"""

import datetime
import json
import os
import subprocess
import sys
import time
from importlib.resources import files
from pathlib import Path

from ..data import BUNDLED_ASPIRIN
from ..report import format_table
from . import command_parser

CONFIGS = Path(str(files("nequip_spectral") / "example_configs"))  # (example_configs/ in a clone)


def _stage(title: str, command: list) -> None:
    print(f"\n=== {title}\n$ {' '.join(command)}\n", flush=True)
    start = time.perf_counter()
    # one thread unless told otherwise: on a few cores torch's default oversubscribes
    env = {"OMP_NUM_THREADS": "1", **os.environ}
    if subprocess.call(command, env=env) != 0:
        sys.exit(f"stage failed: {title}")
    print(f"=== done in {time.perf_counter() - start:.0f} s", flush=True)


def main(argv=None) -> None:
    parser = command_parser(__doc__)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    parser.add_argument("--output", type=Path, default=Path("runs") / f"demo-{stamp}",
                        help="a new directory for both runs (default: runs/demo-TIME)")  # fmt: skip
    parser.add_argument("--backbone-epochs", type=int, default=10,
                        help="epochs of the example backbone (default: 10)")  # fmt: skip
    parser.add_argument("--solver", choices=["closed_form", "sgd"], default="closed_form",
                        help="how the heads are fitted (default: closed_form)")  # fmt: skip
    parser.add_argument("--probe-epochs", type=int, default=3,
                        help="epochs of --solver sgd (default: 3)")  # fmt: skip
    parser.add_argument(
        "--energy-only", action="store_true", help="the energy spectrum alone (no forces)"
    )
    parser.add_argument(
        "--force-directions", type=int, default=16,
        help="closed form: force directions a frame (a quick sketch; 0: all components; "
        "default: 16)",
    )  # fmt: skip
    args, overrides = parser.parse_known_args(argv)
    if not CONFIGS.is_dir():
        sys.exit(f"{CONFIGS} not found: the package was installed without its example configs")
    if args.output.exists():
        sys.exit(f"{args.output} exists; give a new --output")
    output = args.output.resolve()
    start = time.perf_counter()

    train = ["nequip-train", "-cp", str(CONFIGS)]
    data = f"dataset_file={BUNDLED_ASPIRIN}"  # absolute: the demo runs from any directory
    _stage(
        f"1/2 training the example NequIP backbone (l_max = 2) for {args.backbone_epochs} "
        f"epoch{'s' * (args.backbone_epochs != 1)}",
        [*train, "-cn", "aspirin_backbone.yaml", data, f"hydra.run.dir={output / 'backbone'}",
         f"max_epochs={args.backbone_epochs}", *overrides],
    )  # fmt: skip
    spectra = "the energy spectrum" if args.energy_only else "the energy and force spectra"
    how = "in closed form" if args.solver == "closed_form" else f"{args.probe_epochs} epochs"
    _stage(
        f"2/2 probing it: SPN heads for l = 0..7 on the frozen backbone, {spectra}, {how}",
        [*train, "-cn", "aspirin_probe.yaml", data, f"hydra.run.dir={output / 'probe'}",
         *([f"max_epochs={args.probe_epochs}"] if args.solver == "sgd" else []),
         f"solver={args.solver}",
         f"force_spectrum={str(not args.energy_only).lower()}",
         f"spectral_probe.force_directions={args.force_directions or 'all'}",
         f"spectral_probe.backbones=[{output / 'backbone' / 'best.ckpt'}]", *overrides],
    )  # fmt: skip
    report = json.loads((output / "probe" / "spectral_report.json").read_text())
    print(
        f"\nspectrum: {output / 'probe' / 'spectral_report.png'} (and .json, .csv); "
        f"total {time.perf_counter() - start:.0f} s\n\n{format_table(report)}"
    )


if __name__ == "__main__":
    main()
