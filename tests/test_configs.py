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


def test_every_data_file_of_the_config_is_named_with_its_key(tmp_path):
    """``DataFilesExist`` reads every ``*file_path`` of ``data:``, in dicts and lists, with the
    top-level keys they interpolate resolved."""
    from nequip_spectral.train.data_files import data_file_paths

    config = OmegaConf.create({
        "dataset_file": "a.xyz",
        "data": {"split_dataset": {"file_path": "${dataset_file}"},
                 "test_file_path": ["b.xyz", {"file_path": "c.xyz"}]},
    })  # fmt: skip
    assert list(data_file_paths(config.data)) == [
        ("data.split_dataset.file_path", "a.xyz"),
        ("data.test_file_path[0]", "b.xyz"),
        ("data.test_file_path[1].file_path", "c.xyz"),
    ]
