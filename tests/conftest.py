import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch
from helpers import float64_backbone, train_tiny_backbone
from nequip.utils.unittests import CONFTEST_PATH

# NequIP's fixtures for extension packages (float64 global state, small molecules)
exec(CONFTEST_PATH.read_text())

torch.set_num_threads(1)

# fixtures that run nequip-train
TRAINED = {"tiny_backbone", "tiny_allegro", "tiny_backbone_l1", "tiny_preset"}


def pytest_collection_modifyitems(items):
    """``integration``: every test under ``tests/integration`` and every test that needs a
    backbone trained by ``nequip-train``, so that ``pytest -m "not integration"`` takes seconds."""
    for item in items:
        if "integration" in item.path.parts or TRAINED & set(item.fixturenames):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def aspirin_atoms():
    """The first frames of the bundled aspirin dataset."""
    import ase.io

    from nequip_spectral.data import BUNDLED_ASPIRIN

    return ase.io.read(BUNDLED_ASPIRIN, index=":8")


@pytest.fixture(scope="session")
def tiny_aspirin(tmp_path_factory):
    """The first 40 frames of the bundled aspirin data, as a file."""
    import ase.io

    from nequip_spectral.data import BUNDLED_ASPIRIN

    path = tmp_path_factory.mktemp("data") / "aspirin40.extxyz"
    ase.io.write(path, ase.io.read(BUNDLED_ASPIRIN, index=":40"))
    return path


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory, tiny_aspirin):
    """A tiny NequIP l_max = 2 backbone in float64, as .ckpt and .nequip.zip."""
    return float64_backbone(tmp_path_factory.mktemp("backbone"), tiny_aspirin, "nequip")


@pytest.fixture(scope="session")
def tiny_allegro(tmp_path_factory, tiny_aspirin):
    """A tiny Allegro l_max = 2 backbone in float64, as .ckpt and .nequip.zip."""
    return float64_backbone(tmp_path_factory.mktemp("allegro"), tiny_aspirin, "allegro")


@pytest.fixture(scope="session")
def tiny_preset(tmp_path_factory, tiny_aspirin):
    """NequIP's preset ``S`` (its smallest foundation model's shape: 2 layers, ``l_max`` 1),
    narrowed to 8 and 4 features, in float64, as .ckpt and .nequip.zip."""
    return float64_backbone(tmp_path_factory.mktemp("preset"), tiny_aspirin, "preset",
                            "training_module.model.preset=S",
                            "++training_module.model.num_features=[8,4]")  # fmt: skip


@pytest.fixture(scope="session")
def tiny_backbone_l1(tmp_path_factory, tiny_aspirin):
    """A tiny NequIP l_max = 1 backbone, for refusing mixed degrees."""
    return train_tiny_backbone(tmp_path_factory.mktemp("backbone_l1"), tiny_aspirin, "l_max=1")


