"""The example configs' data paths, offline."""

import ase.io
import hydra
from conftest import CONFIGS, write_rmd17_npz
from omegaconf import OmegaConf

from nequip_spectral._keys import injected_energy_key
from nequip_spectral.data import BUNDLED_ASPIRIN


def test_rmd17_config_reads_local_files_in_ev(tmp_path):
    """A small file in rMD17's layout and units (kcal/mol) goes through rmd17_probe.yaml."""
    write_rmd17_npz(ase.io.read(BUNDLED_ASPIRIN, index=":30"), tmp_path)
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
