"""The tap: a trained model split where the SPN reads its features, one adapter per architecture.

NequIP keeps its equivariant features on the nodes: the tap reads the node features that enter
a module of its ``SequentialGraphNetwork`` (by default the last interaction layer, the last
module whose input reaches the highest degree; its output is scalars only).

Allegro keeps them on edges, inside its tensor track, and writes only scalars to the graph
(its maintainers do not plan to expose the tensors: mir-group/allegro issue 113). The last
equivariant tensors it computes are the edge tensors that enter the last layer's tensor
product, the one that turns them into scalars: the analogue of the node features that enter
NequIP's last interaction layer. A forward pre-hook on that tensor product (``tps[-1]`` of the
``Allegro_Module``) captures them for one call; they are summed over each centre atom's edges
(they carry the two-body embedding's polynomial cutoff already, so the sum is smooth in the
positions) and normalised like Allegro's own edge sums, giving per-atom features of degree
``L = l_max`` in e3nn's layout (:class:`AllegroTensorTap`).
"""

import dataclasses
import os

import torch
from e3nn import o3
from nequip.data import AtomicDataDict
from nequip.nn import scatter

from .._nequip import graph_network_modules, load_graph_model
from ..config import MODEL_ID_PREFIX, SpectralProbeError


@dataclasses.dataclass(frozen=True)
class FrozenBackbone:
    """A trained model split at its feature tap.

    Args:
        path: the file it was loaded from
        model: the whole model (``GraphModel``), frozen and in eval mode
        before_tap: the modules that compute the tapped features
        from_tap: the rest, which turns them into the backbone's energy
        irreps: irreps of the tapped node features
    """

    path: str
    model: torch.nn.Module
    before_tap: tuple
    from_tap: tuple
    irreps: o3.Irreps

    def tap(self, data: AtomicDataDict.Type) -> AtomicDataDict.Type:
        """The batch after the modules before the tap; its node features are the tapped ones."""
        for module in self.before_tap:
            data = module(data)
        return data

    def energy(self, tapped: AtomicDataDict.Type) -> torch.Tensor:
        """The backbone's total energy, from the output of :meth:`tap`."""
        for module in self.from_tap:
            tapped = module(tapped)
        return tapped[AtomicDataDict.TOTAL_ENERGY_KEY]


def _node_feature_irreps(module):
    irreps_in = getattr(module, "irreps_in", None) or {}
    irreps = irreps_in.get(AtomicDataDict.NODE_FEATURES_KEY)
    return None if irreps is None else o3.Irreps(str(irreps))


def load_frozen_backbone(path: str, feature_tap: str = "auto") -> FrozenBackbone:
    """Load a ``.ckpt`` / ``.nequip.zip`` model or a model ID on the CPU, then
    :func:`freeze_and_tap` it.

    On the CPU whatever device the file was saved from: the probe module moves it where it
    goes. The path is made absolute, so a probe reloaded from another directory finds it again.
    """
    path = path if path.startswith(MODEL_ID_PREFIX) else os.path.abspath(path)
    try:
        model = load_graph_model(path)
    except Exception as error:
        raise SpectralProbeError(
            f"spectral_probe.backbones: cannot load {path} as a NequIP model: {error}"
        ) from error
    return freeze_and_tap(model, feature_tap, path)


def freeze_and_tap(model, feature_tap: str = "auto", path: str = "the backbone"):
    """Freeze a NequIP ``GraphModel`` (eval mode, no grad) and split it at its feature tap.

    ``auto`` taps the input of the last module whose node-feature input reaches the highest
    degree: for NequIP, the input of the last interaction layer (its output is scalars only);
    for Allegro, the last equivariant edge tensors of its tensor track, summed per atom
    (:class:`AllegroTensorTap`). A module name taps the input
    of that module of the backbone's ``SequentialGraphNetwork`` (the Allegro module's name:
    its tensor track).
    """
    model.eval()
    model.requires_grad_(False)

    named = graph_network_modules(model)
    names = [name for name, _ in named]
    modules = [module for _, module in named]
    allegro = [i for i, module in enumerate(modules) if is_allegro_module(module)]
    if allegro and feature_tap in ("auto", names[allegro[-1]]):  # Allegro's tensor track
        tap = AllegroTensorTap(modules[allegro[-1]])
        return FrozenBackbone(
            path=path,
            model=model,
            before_tap=(*modules[: allegro[-1]], tap),
            from_tap=tuple(modules[allegro[-1] + 1 :]),
            irreps=tap.irreps,
        )
    irreps = [_node_feature_irreps(module) for module in modules]
    if feature_tap == "auto":
        top = max((ir.lmax for ir in irreps if ir is not None), default=0)
        if top == 0:
            raise SpectralProbeError(
                f"spectral_probe.backbones: {path} has no equivariant node features with l > 0 "
                "to tap (its modules' node-feature inputs are all scalars)"
            )
        index = max(i for i, ir in enumerate(irreps) if ir is not None and ir.lmax == top)
    elif feature_tap in names:
        index = names.index(feature_tap)
        if irreps[index] is None or irreps[index].lmax == 0:
            raise SpectralProbeError(
                f"spectral_probe.feature_tap: the input of '{feature_tap}' in {path} has no "
                f"l > 0 node features ({irreps[index]})"
            )
    else:
        raise SpectralProbeError(
            f"spectral_probe.feature_tap: no module '{feature_tap}' in {path}; "
            f"use 'auto' or one of {names}"
        )
    return FrozenBackbone(
        path=path,
        model=model,
        before_tap=tuple(modules[:index]),
        from_tap=tuple(modules[index:]),
        irreps=irreps[index],
    )


def is_allegro_module(module) -> bool:
    """An ``Allegro_Module`` (by its parts: a packaged model's classes are renamed)."""
    return hasattr(module, "tps") and hasattr(module, "num_tensor_features")


class AllegroTensorTap(torch.nn.Module):
    """Runs an ``Allegro_Module`` and writes its last equivariant edge tensors, summed per
    centre atom, as ``node_features`` (irreps ``irreps``).

    Args:
        allegro: the frozen backbone's ``Allegro_Module``
    """

    def __init__(self, allegro: torch.nn.Module):
        super().__init__()
        self.allegro = allegro
        last = allegro.tps[-1]
        self.irreps_in = allegro.irreps_in
        self.irreps = o3.Irreps([(allegro.num_tensor_features, ir) for _, ir in last.irreps_in1])

    def forward(self, data: AtomicDataDict.Type) -> AtomicDataDict.Type:
        captured = {}

        def capture(module, args):
            captured["edges"], _, captured["centers"] = args

        handle = self.allegro.tps[-1].register_forward_pre_hook(capture)
        try:
            data = self.allegro(data)
        finally:
            handle.remove()
        edges = captured["edges"]  # (edges, channels, sum of 2l+1): Allegro's strided layout
        num_atoms = AtomicDataDict.num_nodes(data)
        per_atom = scatter(edges, captured["centers"], dim=0, dim_size=num_atoms)
        blocks = per_atom.split([ir.dim for _, ir in self.allegro.tps[-1].irreps_in1], dim=-1)
        features = torch.cat([block.reshape(num_atoms, -1) for block in blocks], dim=-1)
        data[AtomicDataDict.NODE_FEATURES_KEY] = features
        return self.allegro.avg_num_neighbors_norm(data)
