"""The one seam to NequIP and Lightning beyond their public API.

Everything this package relies on that NequIP or Lightning do not document as public goes
through here, so that an upgrade that moves it breaks one module (and the test that names it,
``tests/integration/test_nequip_seam.py``), not four.
"""

import contextlib

import torch
from lightning.pytorch.core import saving
from nequip.model import ModelFromCheckpoint, ModelFromPackage
from nequip.model.utils import fresh_model_builder_context


@contextlib.contextmanager
def checkpoints_restored_on_cpu():
    """Lightning's ``load_from_checkpoint`` (which NequIP's ``ModelFromCheckpoint`` calls)
    restores every tensor to the device it was saved from; inside this block, to the CPU."""
    default = saving._default_map_location
    saving._default_map_location = lambda storage, location: storage.cpu()
    try:
        yield
    finally:
        saving._default_map_location = default


def load_graph_model(path: str) -> torch.nn.Module:
    """The ``GraphModel`` of a ``.ckpt`` or ``.nequip.zip`` file, on the CPU.

    Loaded in a fresh model-builder context (it may run inside another model's builder), the
    ``sole_model`` of the loaded ``ModuleDict`` taken out (packaged models' classes live in a
    ``torch.package`` namespace: recognised by ``is_graph_model``, not ``isinstance``).
    """
    loader = ModelFromPackage if path.endswith(".nequip.zip") else ModelFromCheckpoint
    with fresh_model_builder_context(), checkpoints_restored_on_cpu():
        loaded = loader(path)
    model = loaded if hasattr(loaded, "is_graph_model") else loaded["sole_model"]
    return model.cpu()


def graph_network_modules(model) -> list:
    """``(name, module)`` of a ``GraphModel``'s ``SequentialGraphNetwork``, in order (the
    network sits inside the ``ForceStressOutput`` wrapper, as its ``func``, when there is one)."""
    network = getattr(model.model, "func", model.model)
    return list(network.named_children())


def probe_of(pl_module) -> torch.nn.Module:
    """The probe model inside a ``NequIPLightningModule`` (its ``GraphModel``'s module)."""
    return pl_module.model["sole_model"].model
