"""What ``nequip_spectral._nequip`` takes from NequIP and Lightning beyond their public API.

Each test names the internal it relies on, so that an upgrade that moves one fails here.
"""

import pytest
import torch

from nequip_spectral._nequip import graph_network_modules, load_graph_model


@pytest.mark.parametrize("kind", ["ckpt", "package"])
def test_a_saved_model_loads_as_its_graph_model_on_the_cpu(tiny_backbone, kind):
    """``ModelFromCheckpoint`` returns a ``ModuleDict`` holding ``sole_model``; a packaged
    model is recognised by ``is_graph_model``."""
    model = load_graph_model(tiny_backbone[kind])
    assert hasattr(model, "is_graph_model")
    assert {p.device.type for p in model.parameters()} == {"cpu"}


def test_a_checkpoint_saved_on_a_gpu_is_restored_on_the_cpu(monkeypatch, tiny_backbone):
    """Lightning's ``saving._default_map_location`` restores a tensor to the device it was
    saved from when that device is there. Here every tensor of the file reads as saved on
    ``cuda:0`` and CUDA reads as there: each must still be restored on the CPU. (Fails when
    the load goes without ``checkpoints_restored_on_cpu``: Lightning keeps ``cuda:0``.)"""
    from lightning.pytorch.accelerators import CUDAAccelerator
    from lightning.pytorch.core import saving

    monkeypatch.setattr(CUDAAccelerator, "is_available", staticmethod(lambda: True))
    restored_on = []
    real_load = saving.pl_load

    def load_as_if_saved_on_cuda(path, map_location, **kwargs):
        def restore(storage, location):
            moved = map_location(storage, "cuda:0")
            restored_on.append("cuda:0" if moved is None else moved.device.type)
            return storage if moved is None else moved

        return real_load(path, map_location=restore, **kwargs)

    monkeypatch.setattr(saving, "pl_load", load_as_if_saved_on_cuda)
    load_graph_model(tiny_backbone["ckpt"])
    assert restored_on and set(restored_on) == {"cpu"}
    assert saving._default_map_location is not None  # put back after the load


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_backbone_trained_on_a_gpu_is_probed_on_the_cpu(tiny_backbone, aspirin_atoms):
    """Where a GPU is at hand ``nequip-train`` trains the tiny backbone there: its checkpoint
    holds CUDA tensors, and the frozen backbone still runs on a CPU batch."""
    from nequip.data import AtomicDataDict
    from nequip.data.transforms import ChemicalSpeciesToAtomTypeMapper, NeighborListTransform

    from nequip_spectral.data import frames_from_ase
    from nequip_spectral.model.frozen_spn import load_frozen_backbone

    saved = torch.load(tiny_backbone["ckpt"], map_location=None, weights_only=False)
    if not any(t.is_cuda for t in saved["state_dict"].values()):
        pytest.skip("the tiny backbone was not trained on the GPU")
    backbone = load_frozen_backbone(tiny_backbone["ckpt"])
    names = list(backbone.model.type_names)
    types = ChemicalSpeciesToAtomTypeMapper(
        model_type_names=names, chemical_species_to_atom_type_map={s: s for s in names}
    )
    frames = frames_from_ase(aspirin_atoms[:2], [types, NeighborListTransform(r_max=5.0)])
    energy = backbone.energy(backbone.tap(AtomicDataDict.batched_from_list(frames))[0])
    assert energy.device.type == "cpu" and torch.isfinite(energy).all()


def test_the_backbone_network_is_the_force_output_s_func(tiny_backbone):
    """``ForceStressOutput.func`` is the ``SequentialGraphNetwork`` whose children the tap
    splits: NequIP's embedding first, its last interaction layer near the end."""
    names = [name for name, _ in graph_network_modules(load_graph_model(tiny_backbone["ckpt"]))]
    assert names[0] == "type_embed" and "layer1_convnet" in names


def test_a_model_id_goes_to_nequips_own_loader(monkeypatch, tiny_backbone):
    """A ``nequip.net:`` ID is not a file: the config lets it through and NequIP's loader
    resolves it (its cache and its download, here replaced by the local package file: no
    network). (Fails when the probe checks the ID as a file, or makes it an absolute path.)"""
    import contextlib
    import pathlib

    from nequip.model.saved_models import load_utils

    from nequip_spectral.config import SpectralProbeConfig
    from nequip_spectral.model.frozen_spn import load_frozen_backbone

    model_id = "nequip.net:tests/tiny-nequip:0.1"
    asked = []

    @contextlib.contextmanager
    def resolve(source):
        asked.append(str(source))
        yield pathlib.Path(tiny_backbone["package"])

    monkeypatch.setattr(load_utils, "_get_model_file_path", resolve)
    SpectralProbeConfig(backbones=(model_id,)).check_backbone_files()
    backbone = load_frozen_backbone(model_id)
    assert asked == [model_id] and backbone.path == model_id
    assert backbone.irreps.lmax == 2
