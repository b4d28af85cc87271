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
from .spn import SPNHeads


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


class SpectralProbeModel(GraphModuleMixin, torch.nn.Module):
    """One SPN head per probed ``l`` plus the control head, for every frozen backbone.

    The backbones are held outside the module tree: they are not parameters (so no optimizer,
    EMA or checkpoint ever sees them), Lightning's ``train()`` cannot switch them out of eval
    mode, and device moves still reach them through ``_apply``. Forces of every head are
    minus its gradient with respect to positions, through the frozen backbone
    (:class:`_ForcesThroughBackbone`). The backbone's own prediction (the residual target) is
    computed once per frame and kept, keyed by the frame's positions and types.

    With ``fit_forces=False`` training computes energies only: no forces, no backward pass
    through the backbone, and each frame's tapped features are kept too, so later epochs
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
        self._frame_cache = {}  # (frame digest, backbone, field) -> tensor
        self.head_names = [head_name(l) for l in self.probe.l_values] + [CONTROL_HEAD]
        self.heads = torch.nn.ModuleList(
            SPNHeads(
                backbone.irreps,
                len(self.head_names),
                self.probe.degree,
                self.probe.channels,
                self.probe.activation,
            )
            for backbone in self._backbones
        )
        self.irreps_harmonics = self.heads[0].irreps_harmonics
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
        self._frame_cache.clear()
        return super()._apply(fn, *args, **kwargs)

    @property
    def cache_bytes(self) -> int:
        """Memory held by the per-frame cache of backbone outputs."""
        return sum(t.numel() * t.element_size() for t in self._frame_cache.values())

    def _backbone_outputs(self, data, with_forces: bool):
        """Per backbone: tapped features, and the backbone's energy and forces (or ``None``).

        The backbone's predictions are the same in every epoch: they come from the cache once
        computed. So do the features when no forces are needed (the energy-only path).
        """
        pos = data[AtomicDataDict.POSITIONS_KEY]
        sizes = data[AtomicDataDict.NUM_NODES_KEY].view(-1).tolist()
        types = data[AtomicDataDict.ATOM_TYPE_KEY].view(-1)
        frames = [
            frame_digest(p, t) for p, t in zip(pos.split(sizes), types.split(sizes), strict=True)
        ]

        def cached(b, field):
            values = [self._frame_cache.get((frame, b, field)) for frame in frames]
            return None if any(v is None for v in values) else torch.cat(values)

        def store(b, field, value, per_atom):
            parts = value.detach().split(sizes if per_atom else 1)
            for frame, part in zip(frames, parts, strict=True):
                self._frame_cache[(frame, b, field)] = part.clone()

        outputs = []
        for b, backbone in enumerate(self._backbones):
            energy, forces = cached(b, "energy"), cached(b, "forces")
            if with_forces:
                tapped = backbone.tap(dict(data))
                features = tapped[AtomicDataDict.NODE_FEATURES_KEY]
                if self.with_backbone_prediction and forces is None:  # (stored with energy)
                    energy = backbone.energy(tapped)
                    (grad,) = torch.autograd.grad(energy.sum(), pos, retain_graph=True)
                    forces = -grad
                    store(b, "energy", energy, per_atom=False)
                    store(b, "forces", forces, per_atom=True)
            else:
                features = cached(b, "features")
                want_energy = self.with_backbone_prediction and energy is None
                if features is None or want_energy:
                    with torch.no_grad():
                        tapped = backbone.tap(dict(data))
                        features = tapped[AtomicDataDict.NODE_FEATURES_KEY]
                        store(b, "features", features, per_atom=True)
                        if want_energy:
                            energy = backbone.energy(tapped)
                            store(b, "energy", energy, per_atom=False)
            outputs.append((features, energy, forces if with_forces else None))
        return outputs

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
            total = per_atom.new_zeros(num_frames, per_atom.shape[1])
            return total.index_add(0, batch, per_atom)

        out = dict(data)
        for b, (features, energy, forces) in enumerate(self._backbone_outputs(data, with_forces)):
            if energy is not None:  # the backbone's prediction: a fixed target
                out[backbone_energy_key(b)] = energy.detach().to(dtype)
            if forces is not None:
                out[backbone_forces_key(b)] = forces.detach().to(dtype)
            heads = self.heads[b]
            # with forces, each head reads its own copy: one backward gives every head's
            # gradient with respect to the features, and none flows into the backbone
            inputs = features.detach().to(dtype)
            if with_forces:
                inputs = inputs.expand(heads.num_heads, -1, -1).clone().requires_grad_()
            head_energies = per_frame(heads(inputs, harmonics).T * readout)
            if with_forces:
                (feature_grads,) = torch.autograd.grad(
                    head_energies.sum(), inputs, create_graph=self.training
                )
                head_forces = _ForcesThroughBackbone.apply(feature_grads, features, pos)
            for h, name in enumerate(self.head_names):
                out[head_energy_key(b, name)] = head_energies[:, h : h + 1]
                if with_forces:
                    out[head_forces_key(b, name)] = head_forces[h].to(dtype)
        return out


class _ForcesThroughBackbone(torch.autograd.Function):
    r"""Forces :math:`-J^\top g_h` of heads whose feature gradients are :math:`g_h`.

    :math:`J` is the Jacobian of the backbone's tapped features with respect to positions.
    Forward: one vector-Jacobian product per head on the backbone's graph. Backward (the
    loss's gradient with respect to each :math:`g_h`): one Jacobian-vector product
    :math:`-J r_h` per head, as the derivative of :math:`u \mapsto J^\top u`. Letting autograd
    differentiate the heads' forces instead would also take second derivatives of the
    backbone with respect to positions, which no parameter needs.
    """

    @staticmethod
    def forward(ctx, feature_grads, features, pos):
        ctx.graph = features, pos  # the backbone's graph, kept for the backward
        ctx.dtype = feature_grads.dtype
        forces = [
            torch.autograd.grad(features, pos, g.to(features.dtype), retain_graph=True)[0]
            for g in feature_grads
        ]
        return -torch.stack(forces)

    @staticmethod
    def backward(ctx, grad_forces):
        features, pos = ctx.graph
        with torch.enable_grad():
            u = torch.zeros_like(features, requires_grad=True)
            (vjp,) = torch.autograd.grad(features, pos, u, create_graph=True)
            jvps = [
                torch.autograd.grad(vjp, u, r.to(pos.dtype), retain_graph=True)[0]
                for r in grad_forces
            ]
        del ctx.graph
        return -torch.stack(jvps).to(ctx.dtype), None, None
