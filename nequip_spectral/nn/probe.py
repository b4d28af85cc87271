"""The probe: SPN heads on the tapped features of frozen backbones, one backbone pass a batch."""

import dataclasses
from typing import NamedTuple

import torch
from e3nn import o3
from nequip.data import AtomicDataDict, register_fields
from nequip.nn import GraphModuleMixin, scatter

from .._keys import (
    ENERGY_FIT,
    FORCE_FIT,
    MARKED_CENTER_KEY,
    MARKED_DIRECTION_KEY,
    backbone_energy_key,
    backbone_forces_key,
    head_energy_key,
    head_forces_key,
    head_name,
)
from ..config import SpectralProbeConfig
from .cache import FrameCache, batch_frame_keys
from .polynomial import LinearHeads
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


class ProbeBatch(NamedTuple):
    """What every head reads of a batch.

    Attributes:
        data: the batch, its positions replaced by ``pos``
        pos: positions, requiring grad when the force spectrum is fitted
        frames: ``(atoms,)`` each atom's frame
        types: ``(atoms,)`` each atom's type
        num_frames: frames in the batch
        harmonics: ``(atoms, dim)`` harmonics of the frame's marked direction, per atom
        readout: ``(atoms, 1)`` 1 for the atoms the heads sum over (``readout``), else 0
    """

    data: dict
    pos: torch.Tensor
    frames: torch.Tensor
    types: torch.Tensor
    num_frames: int
    harmonics: torch.Tensor
    readout: torch.Tensor

    def frame_sum(self, per_atom: torch.Tensor) -> torch.Tensor:
        """``(..., atoms, K)`` -> ``(..., frames, K)``: summed over each frame's atoms."""
        return scatter(per_atom, self.frames, dim=-2, dim_size=self.num_frames)


class SpectralProbeModel(GraphModuleMixin, torch.nn.Module):
    """SPN heads for every probed ``l`` plus the control head, for every frozen backbone.

    Each backbone has one set of heads per spectrum: ``e`` heads fitted to energies alone
    (the energy spectrum) and, with ``spectral_probe.force_spectrum``, ``f`` heads fitted to
    energies and forces (the force spectrum). A head is an :class:`SPNHeads` head (``solver:
    sgd``) or a :class:`LinearHeads` head (``solver: closed_form``), plus a per-type energy.

    The backbones are held outside the module tree: they are not parameters (so no optimizer,
    EMA or checkpoint ever sees them), Lightning's ``train()`` cannot switch them out of eval
    mode, and device moves still reach them through ``_apply``. Forces of the ``f`` heads are
    minus their gradient with respect to positions, through the frozen backbone
    (:class:`_ForcesThroughBackbone`); ``e`` heads have energies only. The backbone's own
    prediction (the residual target) is computed once per frame and kept (:class:`FrameCache`:
    on the CPU, 2 GiB at most, keyed by all a frame's inputs). Without the force
    spectrum nothing needs forces: each frame's tapped features are kept too, so later epochs
    skip the backbone.

    Args:
        backbones: the frozen backbones
        probe: the ``spectral_probe:`` block
        type_names: the model's type names
    """

    def __init__(self, backbones, probe, type_names):
        super().__init__()
        self.probe = SpectralProbeConfig.from_block(probe)
        self._backbones = tuple(backbones)
        self._cache = FrameCache()  # the backbones' per-frame outputs, on the CPU
        self.irreps = [backbone.irreps for backbone in backbones]
        self.fits = (ENERGY_FIT, FORCE_FIT) if self.probe.force_spectrum else (ENERGY_FIT,)
        self.targets = self.probe.heads  # the heads of a set, control last
        self.heads = torch.nn.ModuleDict(
            {fit: torch.nn.ModuleList(map(self._heads, self.irreps)) for fit in self.fits}
        )
        self.shifts = torch.nn.ParameterDict(
            {
                fit: torch.nn.Parameter(
                    torch.zeros(len(backbones), len(type_names), len(self.targets))
                )
                for fit in self.fits
            }
        )
        self.irreps_harmonics = self.heads[ENERGY_FIT][0].irreps_harmonics
        # built once: e3nn's spherical_harmonics() compiles a new module on every call
        self.harmonics = o3.SphericalHarmonics(self.irreps_harmonics, normalize=True,
                                               normalization="integral")  # fmt: skip
        self.with_backbone_prediction = self.probe.target == "residual"
        self.register_buffer(
            "center_types", torch.tensor([type_names.index(s) for s in self.probe.centers])
        )

        irreps_out = {}
        for b in range(len(self._backbones)):
            if self.with_backbone_prediction:
                irreps_out[backbone_energy_key(b)] = "0e"
                irreps_out[backbone_forces_key(b)] = "1o"
            for fit in self.fits:
                for l in self.targets:
                    irreps_out[head_energy_key(b, head_name(l, fit))] = "0e"
                    if fit == FORCE_FIT:
                        irreps_out[head_forces_key(b, head_name(l, fit))] = "1o"
        # register the outputs so that NequIP batches and permutes them as what they are
        register_fields(
            graph_fields=[k for k, irreps in irreps_out.items() if irreps == "0e"],
            node_fields=[k for k, irreps in irreps_out.items() if irreps == "1o"],
        )
        backbone_inputs = {}
        for backbone in self._backbones:
            backbone_inputs.update(backbone.before_tap[0].irreps_in)
        self._init_irreps(
            irreps_in={**backbone_inputs, MARKED_DIRECTION_KEY: "1o", MARKED_CENTER_KEY: None},
            irreps_out=irreps_out,
        )

    def _heads(self, irreps):
        probe, count = self.probe, len(self.targets)
        if probe.solver == "closed_form":
            return LinearHeads(irreps, count, probe.degree, probe.feature_budget, probe.seed)
        return SPNHeads(irreps, count, probe.degree, probe.channels, probe.activation)

    @property
    def backbones(self):
        return self._backbones

    @property
    def with_forces(self) -> bool:
        return FORCE_FIT in self.fits

    def _apply(self, fn, *args, **kwargs):
        for backbone in self._backbones:
            backbone.model._apply(fn, *args, **kwargs)
        self._cache.clear()
        return super()._apply(fn, *args, **kwargs)

    @property
    def cache_bytes(self) -> int:
        """Memory held by the per-frame cache of backbone outputs."""
        return self._cache.bytes

    def backbone_outputs(self, data):
        """Per backbone: tapped features, and the backbone's energy and forces (or ``None``).

        The backbone's predictions are the same in every epoch: they come from the cache once
        computed. So do the features when no forces are needed (no force spectrum).
        """
        pos = data[AtomicDataDict.POSITIONS_KEY]
        sizes = data[AtomicDataDict.NUM_NODES_KEY].view(-1).tolist()
        frames = batch_frame_keys(data)
        per_frame = [1] * len(sizes)
        outputs = []
        for b, backbone in enumerate(self._backbones):
            energy = self._cache.get(frames, f"energy{b}", pos.device)
            forces = self._cache.get(frames, f"forces{b}", pos.device)
            if self.with_forces:
                tapped = backbone.tap(dict(data))
                features = tapped[AtomicDataDict.NODE_FEATURES_KEY]
                if self.with_backbone_prediction and forces is None:
                    energy = backbone.energy(tapped)
                    (grad,) = torch.autograd.grad(energy.sum(), pos, retain_graph=True)
                    forces = -grad
                    self._cache.put(frames, f"energy{b}", energy, per_frame)
                    self._cache.put(frames, f"forces{b}", forces, sizes)
            else:
                features = self._cache.get(frames, f"features{b}", pos.device)
                want_energy = self.with_backbone_prediction and energy is None
                if features is None or want_energy:
                    with torch.no_grad():
                        tapped = backbone.tap(dict(data))
                        features = tapped[AtomicDataDict.NODE_FEATURES_KEY]
                        self._cache.put(frames, f"features{b}", features, sizes)
                        if want_energy:
                            energy = backbone.energy(tapped)
                            self._cache.put(frames, f"energy{b}", energy, per_frame)
            outputs.append((features, energy, forces))
        return outputs

    def read(self, data: AtomicDataDict.Type, dtype) -> "ProbeBatch":
        """What every head reads of a batch (see :class:`ProbeBatch`), in ``dtype``."""
        data = dict(data)
        pos = data[AtomicDataDict.POSITIONS_KEY].detach().requires_grad_(self.with_forces)
        data[AtomicDataDict.POSITIONS_KEY] = pos
        frames = AtomicDataDict.with_batch_(dict(data))[AtomicDataDict.BATCH_KEY]
        types = data[AtomicDataDict.ATOM_TYPE_KEY].view(-1)
        direction = data[MARKED_DIRECTION_KEY].to(dtype).view(-1, 3)[frames]
        readout = torch.ones(pos.shape[0], 1, dtype=dtype, device=pos.device)
        if self.probe.readout == "centers" and self.probe.center_fraction is None:
            readout = torch.isin(types, self.center_types).to(dtype).unsqueeze(-1)
        elif self.probe.readout == "centers":
            readout = data[MARKED_CENTER_KEY].to(dtype).view(-1, 1)  # the frame's own centers
        return ProbeBatch(data, pos, frames, types, AtomicDataDict.num_frames(data),
                          self.harmonics(direction), readout)  # fmt: skip

    def forward(self, data: AtomicDataDict.Type) -> AtomicDataDict.Type:
        batch = self.read(data, dtype=next(self.parameters()).dtype)
        out = dict(batch.data)
        for b, (features, energy, forces) in enumerate(self.backbone_outputs(batch.data)):
            out.update(backbone_predictions(b, energy, forces))
            for fit in self.fits:
                heads = self.heads[fit][b]
                inputs = features.detach().to(batch.harmonics.dtype)
                if fit == FORCE_FIT:
                    # each head reads its own copy: one backward gives every head's gradient
                    # with respect to the features, and none flows into the backbone
                    inputs = inputs.expand(heads.num_heads, -1, -1).clone().requires_grad_()
                per_atom = heads(inputs, batch.harmonics).T + self.shifts[fit][b][batch.types]
                head_energies = batch.frame_sum(per_atom * batch.readout)
                if fit == FORCE_FIT:
                    (feature_grads,) = torch.autograd.grad(
                        head_energies.sum(), inputs, create_graph=self.training
                    )
                    head_forces = _ForcesThroughBackbone.apply(feature_grads, features, batch.pos)
                for h, l in enumerate(self.targets):
                    name = head_name(l, fit)
                    out[head_energy_key(b, name)] = head_energies[:, h : h + 1]
                    if fit == FORCE_FIT:
                        out[head_forces_key(b, name)] = head_forces[h].to(per_atom.dtype)
        return out


def backbone_predictions(b: int, energy, forces) -> dict:
    """Backbone ``b``'s own energy and forces (where computed), fixed targets in float64."""
    predictions = {}
    for key, value in ((backbone_energy_key(b), energy), (backbone_forces_key(b), forces)):
        if value is not None:
            predictions[key] = value.detach().to(torch.float64)
    return predictions


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
            jvps = feature_derivatives(features, pos, grad_forces.to(pos.dtype))
        del ctx.graph
        return -jvps.to(ctx.dtype), None, None


# directions a batched Jacobian-vector product takes at once (bounds its memory)
JVP_CHUNK = 64
# batched Jacobian-vector products: None, on any device but the CPU (the benchmark sets it)
BATCHED_JVP: bool | None = None


def feature_derivatives(features, pos, tangents) -> torch.Tensor:
    r"""``(S, atoms, channels)``: the derivatives :math:`J t_s` of the tapped features along
    each tangent :math:`t_s` of the positions (``(S, atoms, 3)``).

    Jacobian-vector products through the backbone's reverse-mode graph, as the derivative of
    :math:`u \mapsto J^\top u`. Batched (``BATCHED_JVP``; ``None``: on any device but the
    CPU): ``JVP_CHUNK`` directions in one vmapped backward pass, a few kernel launches for all
    of them; else one backward pass a direction, which measures faster on the CPU
    (``nequip-spectral-benchmark --jvp loop|batched``).
    """
    batched = BATCHED_JVP if BATCHED_JVP is not None else pos.device.type != "cpu"
    u = torch.zeros_like(features, requires_grad=True)
    (vjp,) = torch.autograd.grad(features, pos, u, create_graph=True)
    if batched:
        chunks = [
            torch.autograd.grad(vjp, u, chunk, retain_graph=True, is_grads_batched=True)[0]
            for chunk in tangents.split(JVP_CHUNK)
        ]
    else:
        chunks = [torch.autograd.grad(vjp, u, t, retain_graph=True)[0][None] for t in tangents]
    return torch.cat(chunks)
