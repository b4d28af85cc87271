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
import functools
import os

import torch
from e3nn import o3
from nequip.data import AtomicDataDict
from nequip.nn import scatter

from .._nequip import graph_network_modules, load_graph_model
from ..config import MODEL_ID_PREFIX, SpectralProbeError

LAYERS = "layers"  # feature_tap: every layer's features, from one forward pass
EARLIER_TAPS_KEY = "spectral_earlier_taps"  # (a tap module's earlier layers, in the batch)


@dataclasses.dataclass(frozen=True)
class FrozenBackbone:
    """A trained model split at its feature taps.

    Args:
        path: the file it was loaded from
        model: the whole model (``GraphModel``), frozen and in eval mode
        before_tap: the modules that compute the tapped features (up to the last tap)
        from_tap: the rest, which turns the last tap's features into the backbone's energy
        taps: the taps' names, in the order the network computes them
        tap_irreps: irreps of each tap's node features
        earlier_inputs: the positions in ``before_tap`` of the modules whose inputs are the
            earlier taps (NequIP's layers; Allegro's are written by its :class:`AllegroTensorTap`)
    """

    path: str
    model: torch.nn.Module
    before_tap: tuple
    from_tap: tuple
    taps: tuple
    tap_irreps: tuple
    earlier_inputs: tuple = ()

    @property
    def irreps(self) -> o3.Irreps:
        """Irreps of the last tap's node features."""
        return self.tap_irreps[-1]

    def tap(self, data: AtomicDataDict.Type) -> tuple[AtomicDataDict.Type, list]:
        """The batch after the modules before the last tap (its node features are that tap's),
        and every tap's node features, in the order of :attr:`taps`, from this one pass."""
        features = []
        for i, module in enumerate(self.before_tap):
            if i in self.earlier_inputs:
                features.append(data[AtomicDataDict.NODE_FEATURES_KEY])
            data = module(data)
        features.extend(data.pop(EARLIER_TAPS_KEY, ()))
        return data, [*features, data[AtomicDataDict.NODE_FEATURES_KEY]]

    def energy(self, tapped: AtomicDataDict.Type) -> torch.Tensor:
        """The backbone's total energy, from the batch :meth:`tap` gives."""
        for module in self.from_tap:
            tapped = module(tapped)
        return tapped[AtomicDataDict.TOTAL_ENERGY_KEY]


def _node_feature_irreps(module):
    irreps_in = getattr(module, "irreps_in", None) or {}
    irreps = irreps_in.get(AtomicDataDict.NODE_FEATURES_KEY)
    return None if irreps is None else o3.Irreps(str(irreps))


def load_frozen_backbone(path: str, feature_tap="auto") -> FrozenBackbone:
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


def freeze_and_tap(model, feature_tap="auto", path: str = "the backbone") -> FrozenBackbone:
    """Freeze a NequIP ``GraphModel`` (eval mode, no grad) and split it at its feature taps.

    ``auto`` taps the input of the last module whose node-feature input reaches the highest
    degree: for NequIP, the input of the last interaction layer (its output is scalars only);
    for Allegro, the last equivariant edge tensors of its tensor track, summed per atom
    (:class:`AllegroTensorTap`). A module name taps the input of that module of the
    backbone's ``SequentialGraphNetwork`` (the Allegro module's name: its tensor track).
    ``layers`` taps every layer from one pass: for NequIP the input of every module whose
    node features have ``l > 0`` (its interaction layers but the first), for Allegro the
    input of every layer's tensor product; a list of module names taps each of them.
    """
    model.eval()
    model.requires_grad_(False)

    named = graph_network_modules(model)
    names = [name for name, _ in named]
    modules = [module for _, module in named]
    allegro = [i for i, module in enumerate(modules) if is_allegro_module(module)]
    if allegro and feature_tap in ("auto", LAYERS, names[allegro[-1]]):  # its tensor track
        index = allegro[-1]
        num_layers = len(modules[index].tps)
        layers = range(num_layers) if feature_tap == LAYERS else (num_layers - 1,)
        tap = AllegroTensorTap(modules[index], layers)
        return FrozenBackbone(
            path=path,
            model=model,
            before_tap=(*modules[:index], tap),
            from_tap=tuple(modules[index + 1 :]),
            taps=tuple(f"{names[index]}.tps.{i}" for i in layers),
            tap_irreps=(tap.irreps,) * len(layers),
        )
    irreps = [_node_feature_irreps(module) for module in modules]
    equivariant = [i for i, ir in enumerate(irreps) if ir is not None and ir.lmax > 0]
    if not equivariant and feature_tap in ("auto", LAYERS):
        raise SpectralProbeError(
            f"spectral_probe.backbones: {path} has no equivariant node features with l > 0 "
            "to tap (its modules' node-feature inputs are all scalars)"
        )
    if feature_tap == "auto":
        top = max(irreps[i].lmax for i in equivariant)
        indices = [max(i for i in equivariant if irreps[i].lmax == top)]
    elif feature_tap == LAYERS:
        indices = equivariant
    else:
        requested = (feature_tap,) if isinstance(feature_tap, str) else tuple(feature_tap)
        for name in requested:
            if name not in names:
                raise SpectralProbeError(
                    f"spectral_probe.feature_tap: no module '{name}' in {path}; "
                    f"use 'auto', 'layers' or some of {names}"
                )
            if names.index(name) not in equivariant:
                raise SpectralProbeError(
                    f"spectral_probe.feature_tap: the input of '{name}' in {path} has no "
                    f"l > 0 node features ({irreps[names.index(name)]})"
                )
        indices = sorted(names.index(name) for name in requested)
    last = indices[-1]
    return FrozenBackbone(
        path=path,
        model=model,
        before_tap=tuple(modules[:last]),
        from_tap=tuple(modules[last:]),
        taps=tuple(names[i] for i in indices),
        tap_irreps=tuple(irreps[i] for i in indices),
        earlier_inputs=tuple(indices[:-1]),
    )


@functools.lru_cache(maxsize=16)
def tap_names(path: str, feature_tap) -> tuple:
    """The names of the taps ``feature_tap`` gives on the backbone at ``path`` (its file
    loaded once per process: the loss names its entries by them before the model is built)."""
    return load_frozen_backbone(path, feature_tap).taps


def is_allegro_module(module) -> bool:
    """An ``Allegro_Module`` (by its parts: a packaged model's classes are renamed)."""
    return hasattr(module, "tps") and hasattr(module, "num_tensor_features")


class AllegroTensorTap(torch.nn.Module):
    """Runs an ``Allegro_Module`` and writes the equivariant edge tensors that enter the
    tensor products of ``layers`` (default: the last), each summed per centre atom: the last
    as ``node_features`` (irreps ``irreps``), the earlier ones in the batch's
    ``EARLIER_TAPS_KEY`` list (which :meth:`FrozenBackbone.tap` takes out).

    Args:
        allegro: the frozen backbone's ``Allegro_Module``
        layers: indices of the layers whose tensor-product inputs are tapped, in order
    """

    def __init__(self, allegro: torch.nn.Module, layers=(-1,)):
        super().__init__()
        self.allegro = allegro
        self.layers = [allegro.tps[i] for i in layers]
        self.irreps_in = allegro.irreps_in
        irreps_in1 = self.layers[-1].irreps_in1  # (every layer's tensors have the same irreps)
        self.irreps = o3.Irreps([(allegro.num_tensor_features, ir) for _, ir in irreps_in1])

    def forward(self, data: AtomicDataDict.Type) -> AtomicDataDict.Type:
        captured = []

        def capture(module, args):
            captured.append(args)

        handles = [layer.register_forward_pre_hook(capture) for layer in self.layers]
        try:
            data = self.allegro(data)
        finally:
            for handle in handles:
                handle.remove()
        num_atoms = AtomicDataDict.num_nodes(data)
        tapped = []
        for (edges, _, centers), layer in zip(captured, self.layers, strict=True):
            # edges: (edges, channels, sum of 2l+1), Allegro's strided layout
            per_atom = scatter(edges, centers, dim=0, dim_size=num_atoms)
            blocks = per_atom.split([ir.dim for _, ir in layer.irreps_in1], dim=-1)
            tapped.append(torch.cat([block.reshape(num_atoms, -1) for block in blocks], dim=-1))
        data[AtomicDataDict.NODE_FEATURES_KEY] = tapped[-1]
        data = self.allegro.avg_num_neighbors_norm(data)  # (keeps its factor in the batch)
        norm = data[self.allegro.avg_num_neighbors_norm.norm_key]
        if len(tapped) > 1:
            data[EARLIER_TAPS_KEY] = [norm * features for features in tapped[:-1]]
        return data
