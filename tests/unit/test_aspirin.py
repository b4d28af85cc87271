import importlib.util
import pathlib

import numpy as np
import pytest
import torch

from nequip_spectral._keys import MARKED_DIRECTION_KEY, injected_energy_key, injected_forces_key
from nequip_spectral.data import BUNDLED_ASPIRIN
from nequip_spectral.generators.aspirin import generate_aspirin, gfn2_calculator


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # ValueError: sys.modules[name] is None (hidden)
        return False


# GFN2-xTB labels need tblite (the ``data`` extra); the bundled file's test needs nothing more
needs_tblite = pytest.mark.skipif(
    not _importable("tblite"), reason="needs tblite (pip install .[data])"
)


@needs_tblite
def test_same_seed_gives_identical_frames():
    def run(seed):
        return generate_aspirin(3, seed=seed, stride=2, equilibration_steps=4)

    first, again, other = run(7), run(7), run(8)
    for a, b in zip(first, again, strict=True):
        assert np.array_equal(a.positions, b.positions)
        assert np.array_equal(a.get_forces(), b.get_forces())
        assert a.get_potential_energy() == b.get_potential_energy()
    assert not np.allclose(first[-1].positions, other[-1].positions)


@needs_tblite
def test_forces_are_the_energy_gradient(aspirin_atoms):
    """GFN2-xTB forces equal central finite differences of its energy (SCC-converged)."""
    atoms = aspirin_atoms[3]
    h = 1e-4
    for atom, axis in [(0, 0), (13, 2), (11, 1)]:
        energies = []
        for sign in (1, -1):
            moved = atoms.copy()
            moved.positions[atom, axis] += sign * h
            moved.calc = gfn2_calculator()
            energies.append(moved.get_potential_energy())
        numeric = -(energies[0] - energies[1]) / (2 * h)
        assert atoms.get_forces()[atom, axis] == pytest.approx(numeric, abs=1e-3)


def test_bundled_file_loads_with_nequip_datamodule(tmp_path):
    """Runs without tblite (the file is read, not made).

    Mutation tried: the module-level ``pytest.importorskip("tblite")`` back: fails
    ``test_only_the_tests_that_make_labels_need_tblite``; run with tblite hidden
    (``sys.modules["tblite"] = None``), this test passes and the two GFN2-xTB tests skip.
    """
    from nequip.data.datamodule import ASEDataModule
    from nequip.data.transforms import ChemicalSpeciesToAtomTypeMapper, NeighborListTransform

    from nequip_spectral.data import SpectralInjection

    l_values = [0, 3, 8]
    datamodule = ASEDataModule(
        seed=0,
        split_dataset={"file_path": str(BUNDLED_ASPIRIN), "train": 0.9, "val": 0.1},
        transforms=[
            ChemicalSpeciesToAtomTypeMapper(
                model_type_names=["C", "H", "O"],
                chemical_species_to_atom_type_map={"C": "C", "H": "H", "O": "O"},
            ),
            NeighborListTransform(r_max=5.0),
            SpectralInjection({"l_values": l_values}, r_max=5.0),
        ],
        train_dataloader={"_target_": "torch.utils.data.DataLoader", "batch_size": 5},
    )
    datamodule.setup("fit")
    assert len(datamodule.train_dataset[0]) + len(datamodule.val_dataset[0]) >= 1000
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["forces"].shape == (105, 3)
    assert batch[MARKED_DIRECTION_KEY].shape == (5, 3)
    for l in l_values:
        assert batch[injected_energy_key(l)].shape == (5, 1)
        assert batch[injected_forces_key(l)].shape == (105, 3)
    # eV and eV/A: GFN2-xTB aspirin sits near -1078 eV, thermal forces about 1 eV/A
    assert torch.all((batch["total_energy"] > -1090) & (batch["total_energy"] < -1060))
    assert 0.3 < batch["forces"].square().mean().sqrt().item() < 5.0


def test_only_the_tests_that_make_labels_need_tblite():
    """The skip is per test: the two tests that run GFN2-xTB carry it, the bundled file's
    does not, and no module-level ``importorskip`` or ``pytestmark`` skips them all."""
    import ast
    import sys

    module = sys.modules[__name__]
    marked = {
        name
        for name, test in vars(module).items()
        if name.startswith("test_")
        and any(m.name == "skipif" for m in getattr(test, "pytestmark", []))
    }
    assert marked == {"test_same_seed_gives_identical_frames",
                      "test_forces_are_the_energy_gradient"}  # fmt: skip
    tree = ast.parse(pathlib.Path(__file__).read_text())
    top_level = [node for node in tree.body if not isinstance(node, (ast.FunctionDef,
                                                                      ast.ClassDef))]  # fmt: skip
    calls = [call.func.attr for node in top_level for call in ast.walk(node)
             if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)]  # fmt: skip
    assert "importorskip" not in calls
    assert not hasattr(module, "pytestmark")
