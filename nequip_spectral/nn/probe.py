"""The probe: SPN heads on the tapped features of frozen backbones, one backbone pass a batch."""

import dataclasses

import torch
from e3nn import o3
from nequip.data import AtomicDataDict
from nequip.data._key_registry import register_fields
from nequip.nn import GraphModuleMixin

from .._keys import (
    CONTROL_HEAD,
    MARKED_DIRECTION_KEY,
    backbone_energy_key,
    backbone_forces_key,
    head_energy_key,
    head_forces_key,
    head_name,
)
from ..config import SpectralProbeConfig
from ..data.injection import frame_digest
from .spn import SPNHead


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

    def run(self, data: AtomicDataDict.Type, with_energy: bool):
        """Tapped node features and, if asked, the backbone's total energy."""
        for module in self.before_tap:
            data = module(data)
        features = data[AtomicDataDict.NODE_FEATURES_KEY]
        if not with_energy:
            return features, None
        for module in self.from_tap:
            data = module(data)
        return features, data[AtomicDataDict.TOTAL_ENERGY_KEY]


class SpectralProbeModel(GraphModuleMixin, torch.nn.Module):
    """One SPN head per probed ``l`` plus the control head, for every frozen backbone.

    The backbones are held outside the module tree: they are not parameters (so no optimizer,
    EMA or checkpoint ever sees them), Lightning's ``train()`` cannot switch them out of eval
    mode, and device moves still reach them through ``_apply``. Forces of every head are
    minus its gradient with respect to positions, through the frozen backbone.

    With ``fit_forces=False`` training computes energies only: no forces, no backward pass
    through the backbone, and each frame's tapped features (and backbone energy) are kept
    after their first computation, keyed by the frame's positions and types, so later epochs
    skip the backbone. Evaluation (``eval()``) always computes forces.

    Args:
        backbones: the frozen backbones
        probe: the ``spectral_probe:`` block
        type_names: the model's type names (for ``readout: centers``)
        fit_forces: compute head forces in training
    """

    def __init__(self, backbones, probe, type_names, fit_forces: bool = True):
        super().__init__()
        self.probe = SpectralProbeConfig.from_block(probe)
        self._backbones = tuple(backbones)
        self.fit_forces = fit_forces
        self._feature_cache = {}  # frame digest -> per backbone (features, energy)
        self.head_names = [head_name(l) for l in self.probe.l_values] + [CONTROL_HEAD]
        self.heads = torch.nn.ModuleList(
            torch.nn.ModuleDict(
                {
                    name: SPNHead(
                        backbone.irreps,
                        self.probe.degree,
                        self.probe.channels,
                        self.probe.activation,
                    )
                    for name in self.head_names
                }
            )
            for backbone in self._backbones
        )
        self.irreps_harmonics = self.heads[0][CONTROL_HEAD].irreps_harmonics
        self.with_backbone_prediction = self.probe.target == "residual"
        self.register_buffer(
            "center_types", torch.tensor([type_names.index(s) for s in self.probe.centers])
        )

        irreps_out = {}
        for b in range(len(self._backbones)):
            if self.with_backbone_prediction:
                irreps_out[backbone_energy_key(b)] = "0e"
                irreps_out[backbone_forces_key(b)] = "1o"
            for name in self.head_names:
                irreps_out[head_energy_key(b, name)] = "0e"
                irreps_out[head_forces_key(b, name)] = "1o"
        # register the outputs so that NequIP batches and permutes them as what they are
        register_fields(
            graph_fields=[k for k, irreps in irreps_out.items() if irreps == "0e"],
            node_fields=[k for k, irreps in irreps_out.items() if irreps == "1o"],
        )
        backbone_inputs = {}
        for backbone in self._backbones:
            backbone_inputs.update(backbone.before_tap[0].irreps_in)
        self._init_irreps(
            irreps_in={**backbone_inputs, MARKED_DIRECTION_KEY: "1o"},
            irreps_out=irreps_out,
        )

    @property
    def backbones(self):
        return self._backbones

    def _apply(self, fn, *args, **kwargs):
        for backbone in self._backbones:
            backbone.model._apply(fn, *args, **kwargs)
        self._feature_cache.clear()
        return super()._apply(fn, *args, **kwargs)

    @property
    def feature_cache_bytes(self) -> int:
        """Memory held by the energy-only path's cache of tapped features."""
        return sum(
            tensor.numel() * tensor.element_size()
            for entries in self._feature_cache.values()
            for pair in entries
            for tensor in pair
            if tensor is not None  # no backbone energy with `target: injected`
        )

    def _backbone_outputs(self, data, with_grad: bool):
        """Per backbone ``(features, energy)`` of a batch; cached when ``with_grad`` is off."""

        def run_all():
            return [b.run(dict(data), self.with_backbone_prediction) for b in self._backbones]

        if with_grad:
            return run_all()
        pos = data[AtomicDataDict.POSITIONS_KEY]
        sizes = data[AtomicDataDict.NUM_NODES_KEY].view(-1).tolist()
        keys = [
            frame_digest(p, t)
            for p, t in zip(
                pos.split(sizes), data[AtomicDataDict.ATOM_TYPE_KEY].view(-1).split(sizes),
                strict=True,
            )
        ]  # fmt: skip
        if not all(key in self._feature_cache for key in keys):
            with torch.no_grad():
                outputs = run_all()
            for frame, key in enumerate(keys):
                self._feature_cache[key] = [
                    (
                        features.split(sizes)[frame].clone(),
                        None if energy is None else energy[frame : frame + 1].clone(),
                    )
                    for features, energy in outputs
                ]
        cached = [self._feature_cache[key] for key in keys]
        return [
            (
                torch.cat([frame[b][0] for frame in cached]),
                None if cached[0][b][1] is None else torch.cat([frame[b][1] for frame in cached]),
            )
            for b in range(len(self._backbones))
        ]

    def forward(self, data: AtomicDataDict.Type) -> AtomicDataDict.Type:
        with_forces = self.fit_forces or not self.training
        data = dict(data)
        pos = data[AtomicDataDict.POSITIONS_KEY].detach().requires_grad_(with_forces)
        data[AtomicDataDict.POSITIONS_KEY] = pos
        num_atoms = pos.shape[0]
        batch = data.get(AtomicDataDict.BATCH_KEY, pos.new_zeros(num_atoms, dtype=torch.long))
        num_frames = AtomicDataDict.num_frames(data)
        dtype = next(self.parameters()).dtype

        direction = data[MARKED_DIRECTION_KEY].to(dtype).view(-1, 3)[batch]
        harmonics = o3.spherical_harmonics(self.irreps_harmonics, direction, normalize=True)
        readout = torch.ones(num_atoms, 1, dtype=dtype, device=pos.device)
        if self.probe.readout == "centers":
            types = data[AtomicDataDict.ATOM_TYPE_KEY].view(-1)
            readout = torch.isin(types, self.center_types).to(dtype).unsqueeze(-1)

        def per_frame(per_atom):
            total = per_atom.new_zeros(num_frames, 1)
            return total.index_add(0, batch, per_atom)

        energies = []  # (energy key, forces key, energy, trainable)
        backbone_outputs = self._backbone_outputs(data, with_grad=with_forces)
        for b, (features, energy) in enumerate(backbone_outputs):
            features = features.to(dtype)
            if energy is not None:
                energies.append(
                    (backbone_energy_key(b), backbone_forces_key(b), energy.to(dtype), False)
                )
            for name, head in self.heads[b].items():
                energy = per_frame(head(features, harmonics) * readout)
                energies.append((head_energy_key(b, name), head_forces_key(b, name), energy, True))

        out = dict(data)
        for energy_key, forces_key, energy, trainable in energies:
            if not with_forces:
                out[energy_key] = energy if trainable else energy.detach()
                continue
            (grad,) = torch.autograd.grad(
                energy.sum(), pos, retain_graph=True, create_graph=self.training and trainable
            )
            if not trainable:  # the backbone's prediction is a fixed target
                energy, grad = energy.detach(), grad.detach()
            out[energy_key], out[forces_key] = energy, -grad
        return out
