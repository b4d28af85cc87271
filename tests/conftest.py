import os
import pathlib

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch
from nequip.utils.unittests import CONFTEST_PATH

# NequIP's fixtures for extension packages (float64 global state, small molecules)
exec(CONFTEST_PATH.read_text())

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def aspirin_atoms():
    """The first frames of the bundled aspirin dataset."""
    import ase.io

    from nequip_spectral.data import BUNDLED_ASPIRIN

    return ase.io.read(BUNDLED_ASPIRIN, index=":8")


CONFIGS = pathlib.Path(__file__).parents[1] / "example_configs"


def nequip_train(config: str, run_dir, *overrides, check: bool = True):
    """Run ``nequip-train`` on an example config; return the completed process."""
    import subprocess

    flags = [o for o in overrides if o.startswith("-")]  # e.g. -m: before any override
    overrides = [o for o in overrides if not o.startswith("-")]
    command = ["nequip-train", *flags, "-cp", str(CONFIGS), "-cn", config]
    result = subprocess.run(
        [*command, f"hydra.run.dir={run_dir}", *overrides],
        capture_output=True, text=True, env={**os.environ},
    )  # fmt: skip
    if check and result.returncode != 0:
        raise RuntimeError(f"nequip-train failed:\n{result.stderr[-4000:]}")
    return result


@pytest.fixture(scope="session")
def tiny_aspirin(tmp_path_factory):
    """The first 40 frames of the bundled aspirin data, as a file."""
    import ase.io

    from nequip_spectral.data import BUNDLED_ASPIRIN

    path = tmp_path_factory.mktemp("data") / "aspirin40.extxyz"
    ase.io.write(path, ase.io.read(BUNDLED_ASPIRIN, index=":40"))
    return path


def write_rmd17_npz(atoms_list, source_dir):
    """Frames as an rMD17 file (kcal/mol) under ``source_dir``, where rMD17DataModule reads it."""
    import numpy as np

    kcalmol_to_ev = 0.0433641
    path = source_dir / "rmd17" / "npz_data" / "rmd17_aspirin.npz"
    path.parent.mkdir(parents=True)
    np.savez(
        path,
        nuclear_charges=atoms_list[0].numbers,
        coords=np.stack([atoms.positions for atoms in atoms_list]),
        energies=np.array([atoms.get_potential_energy() for atoms in atoms_list]) / kcalmol_to_ev,
        forces=np.stack([atoms.get_forces() for atoms in atoms_list]) / kcalmol_to_ev,
    )
    return path


def train_tiny_backbone(run_dir, dataset, *overrides, architecture="nequip") -> str:
    """A tiny backbone (4 features, 2 layers) trained for one epoch; its best.ckpt."""
    nequip_train(
        "aspirin_backbone.yaml",
        run_dir,
        f"dataset_file={dataset}",
        f"backbone_model={architecture}",
        "max_epochs=1",
        "num_features=4",
        "training_module.model.num_layers=2",
        "run=[train]",
        *overrides,
    )
    return str(run_dir / "best.ckpt")


def _float64_backbone(run_dir, dataset, architecture) -> dict:
    """A tiny backbone in float64, as .ckpt and .nequip.zip."""
    import subprocess

    checkpoint = train_tiny_backbone(
        run_dir, dataset, "training_module.model.model_dtype=float64", architecture=architecture
    )
    package = run_dir / "backbone.nequip.zip"
    subprocess.run(
        ["nequip-package", "build", checkpoint, str(package)], check=True, capture_output=True
    )
    return {"ckpt": checkpoint, "package": str(package)}


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory, tiny_aspirin):
    """A tiny NequIP l_max = 2 backbone in float64, as .ckpt and .nequip.zip."""
    return _float64_backbone(tmp_path_factory.mktemp("backbone"), tiny_aspirin, "nequip")


@pytest.fixture(scope="session")
def tiny_allegro(tmp_path_factory, tiny_aspirin):
    """A tiny Allegro l_max = 2 backbone in float64, as .ckpt and .nequip.zip."""
    return _float64_backbone(tmp_path_factory.mktemp("allegro"), tiny_aspirin, "allegro")


@pytest.fixture(scope="session")
def tiny_backbone_l1(tmp_path_factory, tiny_aspirin):
    """A tiny NequIP l_max = 1 backbone, for refusing mixed degrees."""
    return train_tiny_backbone(tmp_path_factory.mktemp("backbone_l1"), tiny_aspirin, "l_max=1")


def as_frames(head, control, l_values, kinds=("forces", "energy"), L=2):
    """The per-frame sums of a synthetic test set, as the report reads them."""
    import dataclasses

    import numpy as np

    from nequip_spectral.config import SpectralProbeConfig
    from nequip_spectral.report.frames import FrameSums

    backbones = tuple(f"b{b}.ckpt" for b in range(head.shape[0]))
    probe = SpectralProbeConfig(backbones=backbones, l_values=tuple(l_values))
    num_frames = head.shape[1]
    context = {
        "probe": dataclasses.asdict(probe), "L": L, "kinds": list(kinds), "head_parameters": 1,
        "solver": {}, "n_bootstrap": 50, "block_length": None,
    }  # fmt: skip
    order = np.arange(num_frames)
    return FrameSums(head, control, np.array(["f"] * num_frames), order, order, context)
