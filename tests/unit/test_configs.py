"""The example configs' data paths, offline."""

import ase.io
import hydra
import pytest
from helpers import CONFIGS, write_rmd17_npz
from omegaconf import OmegaConf

from nequip_spectral._keys import injected_energy_key
from nequip_spectral.data import BUNDLED_ASPIRIN


def compose(*overrides):
    """The probe config composed from its groups, as ``nequip-train`` composes it."""
    with hydra.initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        return hydra.compose("aspirin_probe.yaml", overrides=list(overrides))


def test_rmd17_config_reads_local_files_in_ev(tmp_path):
    """A small file in rMD17's layout and units (kcal/mol) goes through ``data=rmd17``."""
    write_rmd17_npz(ase.io.read(BUNDLED_ASPIRIN, index=":30"), tmp_path)
    config = compose("data=rmd17", f"data_source_dir={tmp_path}", "spectral_probe.backbones=[x]",
                     "data.subset_len=30", "data.train_val_test_split=[20,5,5]")  # fmt: skip
    datamodule = hydra.utils.instantiate(config.data, _recursive_=False)
    datamodule.prepare_data()
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    energies = batch["total_energy"].view(-1)
    assert ((energies > -1090) & (energies < -1060)).all()  # back in eV
    assert batch[injected_energy_key(4)].shape == (len(energies), 1)


@pytest.mark.parametrize("solver", ["closed_form", "sgd"])
def test_the_solver_group_gives_an_optimizer_to_sgd_only(solver):
    """A closed-form probe needs no optimizer, scheduler or monitor; ``solver=sgd`` adds them."""
    config = compose(f"solver={solver}", "spectral_probe.backbones=[x]")
    assert config.spectral_probe.solver == solver
    assert ("optimizer" in config.training_module) == (solver == "sgd")
    assert ("lr_scheduler" in config.training_module) == (solver == "sgd")
    assert all("monitor" not in callback for callback in config.trainer.callbacks)


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
