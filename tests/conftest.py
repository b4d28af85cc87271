import os

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
