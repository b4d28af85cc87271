"""``nequip-spectral-evaluate RUN_DIR``: re-run NequIP's test stage for a trained spectral probe.

NequIP 0.19 evaluates with ``run: [test]``; this is a thin wrapper over it. It takes the run's
own config (``RUN_DIR/.hydra/config.yaml``), sets ``run: [test]``, loads the trained probe with
``nequip.model.ModelFromCheckpoint`` (``RUN_DIR/best.ckpt``; the backbones are loaded again
from their paths), optionally tests on another dataset file (all of its frames, through an
``ASEDataModule`` with the run's transforms, whatever datamodule the run used), and calls
``nequip-train`` in a new directory, where ``SpectralMetrics`` prints the table and writes the
report. ``nequip-train`` runs in the training run's working directory, so the relative paths of
its config mean what they meant then. The training run's files are never touched.
"""

import datetime
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import ase.io
from omegaconf import OmegaConf

from ..report import REPORT_FILES
from . import command_parser


def evaluation_config(run_dir: Path, dataset_file=None):
    """The run's config, turned into a test-only run of its best checkpoint."""
    config_file = run_dir / ".hydra" / "config.yaml"
    checkpoint = run_dir / "best.ckpt"
    for path in (config_file, checkpoint):
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: is {run_dir} a nequip-train run directory?")
    config = OmegaConf.load(config_file)
    if "spectral_probe" not in config:
        raise ValueError(
            f"{run_dir} is not a spectral probe run (its config has no spectral_probe: block: a "
            "backbone's run?); give the directory of a probe run (nequip-train -cn "
            "aspirin_probe.yaml ...)"
        )
    type_names = list(config.training_module.model.type_names)
    config.pop("ckpt_path", None)  # a resumed run's resume state: the test loads best.ckpt
    config.run = ["test"]
    config.training_module.model = {
        "_target_": "nequip.model.ModelFromCheckpoint",
        "checkpoint_path": str(checkpoint.resolve()),
    }
    if dataset_file is not None:
        if not Path(dataset_file).is_file():
            raise FileNotFoundError(f"--dataset-file {dataset_file} not found")
        path = str(Path(dataset_file).resolve())
        frames = ase.io.read(path, index=":")
        unknown = sorted({s for atoms in frames for s in atoms.get_chemical_symbols()}
                         - set(type_names))  # fmt: skip
        if unknown:
            raise ValueError(
                f"--dataset-file {dataset_file}: {unknown} not among the probe's type names "
                f"{type_names}; test on frames of the species its backbones know"
            )
        config.data = {
            "_target_": "nequip.data.datamodule.ASEDataModule",
            "seed": 0,
            "test_file_path": path,
            "train_file_path": path,  # NequIP wants a training set; a test-only run never loads it
            "transforms": OmegaConf.to_container(config.data.transforms),  # (kept unresolved)
            "test_dataloader": OmegaConf.to_container(config.data.test_dataloader, resolve=True),
        }
    return config


def training_directory(run_dir: Path) -> Path:
    """Where ``nequip-train`` ran for ``run_dir`` (Hydra records it), or the current one."""
    hydra = run_dir / ".hydra" / "hydra.yaml"
    if hydra.is_file():
        cwd = OmegaConf.load(hydra).hydra.runtime.get("cwd")
        if cwd and Path(cwd).is_dir():
            return Path(cwd)
    return Path.cwd()


def main(argv=None) -> None:
    parser = command_parser(__doc__)
    parser.add_argument("run_dir", type=Path, help="directory of a trained probe run")
    parser.add_argument("--dataset-file", help="test on all frames of this file instead")
    parser.add_argument(
        "--output", type=Path, help="new directory for the report (default: RUN_DIR/evaluate-TIME)"
    )
    args = parser.parse_args(argv)

    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    output = (args.output or args.run_dir / f"evaluate-{stamp}").resolve()
    if output.exists():
        parser.error(f"{output} exists; give a new --output directory")
    try:
        config = evaluation_config(args.run_dir, args.dataset_file)
    except (FileNotFoundError, ValueError) as error:
        parser.error(str(error))

    with tempfile.TemporaryDirectory() as config_dir:  # the output directory: Hydra's own
        OmegaConf.save(config, Path(config_dir) / "evaluate_config.yaml")
        command = ["nequip-train", "-cp", config_dir, "-cn", "evaluate_config.yaml",
                   f"hydra.run.dir={output}"]  # fmt: skip
        code = subprocess.call(command, cwd=training_directory(args.run_dir.resolve()))
    if code != 0 and output.is_dir() and not (output / REPORT_FILES[0]).exists():
        shutil.rmtree(output)  # a failed try leaves nothing behind (the directory was new)
    sys.exit(code)


if __name__ == "__main__":
    main()
