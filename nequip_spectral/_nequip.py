"""The one seam to NequIP and Lightning beyond their public API.

Everything this package relies on that NequIP or Lightning do not document as public goes
through here, so that an upgrade that moves it breaks one module (and the test that names it,
``tests/integration/test_nequip_seam.py``), not four.
"""

import contextlib

import torch
from lightning.pytorch.core import saving
from nequip.model.saved_models import load_saved_model
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


def load_graph_model(source: str) -> torch.nn.Module:
    """The ``GraphModel`` of a ``.ckpt`` or ``.nequip.zip`` file or of a model ID
    (``nequip.net:group/name:version``), on the CPU.

    Loaded by NequIP's own loader (``load_saved_model``: its cache, its errors) in a fresh
    model-builder context (it may run inside another model's builder).
    """
    with fresh_model_builder_context(), checkpoints_restored_on_cpu():
        model = load_saved_model(source)
    return model.cpu()


def graph_network_modules(model) -> list:
    """``(name, module)`` of a ``GraphModel``'s ``SequentialGraphNetwork``, in order (the
    network sits inside the ``ForceStressOutput`` wrapper, as its ``func``, when there is one)."""
    network = getattr(model.model, "func", model.model)
    return list(network.named_children())


def probe_of(pl_module) -> torch.nn.Module:
    """The probe model inside a ``NequIPLightningModule`` (its ``GraphModel``'s module)."""
    return pl_module.model["sole_model"].model
