"""The example configs' data paths, offline."""

import ase.io
import hydra
import numpy as np
from conftest import CONFIGS
from omegaconf import OmegaConf

from nequip_spectral._keys import injected_energy_key
from nequip_spectral.data import BUNDLED_ASPIRIN

KCALMOL_TO_EV = 0.0433641


def test_rmd17_config_reads_local_files_in_ev(tmp_path):
    """A small file in rMD17's layout and units (kcal/mol) goes through rmd17_probe.yaml."""
    frames = ase.io.read(BUNDLED_ASPIRIN, index=":30")
    npz_dir = tmp_path / "rmd17" / "npz_data"
    npz_dir.mkdir(parents=True)
    np.savez(
        npz_dir / "rmd17_aspirin.npz",
        nuclear_charges=frames[0].numbers,
        coords=np.stack([a.positions for a in frames]),
        energies=np.array([a.get_potential_energy() for a in frames]) / KCALMOL_TO_EV,
        forces=np.stack([a.get_forces() for a in frames]) / KCALMOL_TO_EV,
    )
    config = OmegaConf.load(CONFIGS / "rmd17_probe.yaml")
    config.data_source_dir = str(tmp_path)
    config.spectral_probe.backbones = ["unused.ckpt"]
    config.data.subset_len = 30
    config.data.train_val_test_split = [20, 5, 5]
    datamodule = hydra.utils.instantiate(config.data, _recursive_=False)
    datamodule.prepare_data()
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    energies = batch["total_energy"].view(-1)
    assert ((energies > -1090) & (energies < -1060)).all()  # back in eV
    assert batch[injected_energy_key(4)].shape == (len(energies), 1)
