"""A plain ``pip install .``, outside any clone: the demo and its configs work from anywhere."""

import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).parents[2]


def test_an_installed_package_finds_and_composes_its_example_configs(tmp_path):
    """The package installed into a fresh target (no ``example_configs/`` of a clone beside
    it); from another directory the demo's configs resolve inside it and Hydra composes the
    probe config from them, groups included. (Fails when the configs are not package data, or
    when the demo looks for them beside a clone.)"""
    target, elsewhere = tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                    str(target), str(REPO)], check=True, capture_output=True)  # fmt: skip
    script = (
        "import hydra\n"
        "from nequip_spectral.scripts.demo import CONFIGS\n"
        "with hydra.initialize_config_dir(config_dir=str(CONFIGS), version_base=None):\n"
        "    config = hydra.compose('aspirin_probe.yaml', ['spectral_probe.backbones=[x]',\n"
        "                                                  'solver=sgd', 'data=rmd17'])\n"
        "print(CONFIGS)\n"
        "print(config.training_module.optimizer._target_, config.data._target_)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    result = subprocess.run([sys.executable, "-c", script], cwd=elsewhere, env=env,
                            capture_output=True, text=True, check=True)  # fmt: skip
    configs, targets = result.stdout.strip().splitlines()[-2:]
    assert pathlib.Path(configs).is_relative_to(target)
    assert targets == "torch.optim.Adam nequip.data.datamodule.rMD17DataModule"
    demo = subprocess.run([sys.executable, "-m", "nequip_spectral.scripts.demo", "--help"],
                          cwd=elsewhere, env=env, capture_output=True, text=True)  # fmt: skip
    assert demo.returncode == 0 and "--backbone-epochs" in demo.stdout
    # Hydra's package path (-cp pkg://nequip_spectral.example_configs) finds them too
    script = (
        "import hydra\n"
        "with hydra.initialize_config_module('nequip_spectral.example_configs',\n"
        "                                 version_base=None, job_name='job'):\n"
        "    config = hydra.compose('aspirin_probe.yaml', ['spectral_probe.backbones=[x]'])\n"
        "print(config.max_epochs, config.spectral_probe.solver)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=elsewhere, env=env,
                            capture_output=True, text=True, check=True)  # fmt: skip
    assert result.stdout.split() == ["1", "closed_form"]
