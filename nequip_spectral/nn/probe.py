"""The probe: SPN heads on the tapped features of frozen backbones, one backbone pass a batch."""

from typing import NamedTuple

import torch
from e3nn import o3
from nequip.data import AtomicDataDict, register_fields
from nequip.nn import GraphModuleMixin, scatter

from .._keys import (
    MARKED_CENTER_KEY,
    MARKED_DIRECTION_KEY,
    backbone_energy_key,
    backbone_forces_key,
)
from ..config import SpectralProbeConfig
from ..data.injection import frame_digest
from ..heads import ENERGY_FIT, FORCE_FIT, KINDS, slots
from ..theory.ridge import sketch_directions
from .cache import FrameCache, batch_frame_keys
from .polynomial import LinearHeads
from .spn import SPNHeads


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
    """SPN heads for every probed ``l`` plus the control head, for every frozen backbone and
    each of its taps (``feature_tap``; a *slot* is a backbone's tap, backbone-major).

    Each slot has one set of heads per spectrum: ``e`` heads fitted to energies alone
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
        self.slots = slots(len(backbones), len(backbones[0].taps))  # (backbone, tap) a set
        self.irreps = [backbones[b].tap_irreps[t or 0] for b, t in self.slots]
        self.fits = (ENERGY_FIT, FORCE_FIT) if self.probe.force_spectrum else (ENERGY_FIT,)
        self.num_heads = len(self.probe.head_roles)  # of a set
        self.batched_jvp = None  # see feature_derivatives (the benchmark sets it)
        self.heads = torch.nn.ModuleDict(
            {fit: torch.nn.ModuleList(map(self._heads, self.irreps)) for fit in self.fits}
        )
        self.shifts = torch.nn.ParameterDict(
            {
                fit: torch.nn.Parameter(
                    torch.zeros(len(self.slots), len(type_names), self.num_heads)
                )
                for fit in self.fits
            }
        )
        # the harmonics of the highest ceiling: a head of a lower one reads their first blocks
        self.irreps_harmonics = max((heads.irreps_harmonics for heads in self.heads[ENERGY_FIT]),
                                    key=lambda irreps: irreps.dim)  # fmt: skip
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
        for slot in self.slots:
            for fit in self.fits:
                for head in self.probe.heads(slot, fit):
                    irreps_out[head.output_key("energy")] = "0e"
                    if fit == FORCE_FIT:
                        irreps_out[head.output_key("forces")] = "1o"
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
        probe, count = self.probe, self.num_heads
        if probe.solver == "closed_form":
            return LinearHeads(irreps, count, probe.degree, probe.feature_budget, probe.seed)
        return SPNHeads(irreps, count, probe.degree, probe.channels, probe.activation)

    @property
    def backbones(self):
        return self._backbones

    @property
    def with_forces(self) -> bool:
        return FORCE_FIT in self.fits

    @property
    def ceilings(self) -> list[int]:
        """``d_r L`` of each tap: the highest degree its heads can represent."""
        return [self.probe.degree * irreps.lmax for irreps in self.irreps[: self.num_taps]]

    @property
    def ceiling(self) -> int:
        """``d_r L`` of the last tap."""
        return self.ceilings[-1]

    @property
    def num_taps(self) -> int:
        return len(self._backbones[0].taps)

    def slot_harmonics(self, s: int, harmonics: torch.Tensor) -> torch.Tensor:
        """The harmonics the heads of slot ``s`` read (those up to its tap's ceiling)."""
        return harmonics[:, : self.heads[ENERGY_FIT][s].irreps_harmonics.dim]

    @property
    def kinds(self) -> tuple:
        """The spectra it measures, forces (the primary one when there) first."""
        return KINDS if self.with_forces else ("energy",)

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
        """Per backbone: every tap's features (a list, one forward pass for all), and the
        backbone's energy and forces (or ``None``).

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
                tapped, features = backbone.tap(dict(data))
                if self.with_backbone_prediction and forces is None:
                    energy = backbone.energy(tapped)
                    (grad,) = torch.autograd.grad(energy.sum(), pos, retain_graph=True)
                    forces = -grad
                    self._cache.put(frames, f"energy{b}", energy, per_frame)
                    self._cache.put(frames, f"forces{b}", forces, sizes)
            else:
                keys = [f"features{b}_{t}" for t in range(len(backbone.taps))]
                features = [self._cache.get(frames, key, pos.device) for key in keys]
                want_energy = self.with_backbone_prediction and energy is None
                # (a full cache may hold some taps' features and not the others')
                if any(tap_features is None for tap_features in features) or want_energy:
                    with torch.no_grad():
                        tapped, features = backbone.tap(dict(data))
                        for key, tap_features in zip(keys, features, strict=True):
                            self._cache.put(frames, key, tap_features, sizes)
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
        for b, (taps, energy, forces) in enumerate(self.backbone_outputs(batch.data)):
            out.update(backbone_predictions(b, energy, forces))
            for t, features in enumerate(taps):
                for fit in self.fits:  # (slot b * len(taps) + t: backbone-major)
                    out.update(self._head_outputs(b * len(taps) + t, fit, features, batch))
        return out

    def _head_outputs(self, s: int, fit: str, features, batch: "ProbeBatch") -> dict:
        """The energies (and with the force spectrum, forces) of slot ``s``'s set ``fit``."""
        heads = self.heads[fit][s]
        inputs = features.detach().to(batch.harmonics.dtype)
        if fit == FORCE_FIT:
            # each head reads its own copy: one backward gives every head's gradient
            # with respect to the features, and none flows into the backbone
            inputs = inputs.expand(heads.num_heads, -1, -1).clone().requires_grad_()
        harmonics = self.slot_harmonics(s, batch.harmonics)
        per_atom = heads(inputs, harmonics).T + self.shifts[fit][s][batch.types]
        head_energies = batch.frame_sum(per_atom * batch.readout)
        if fit == FORCE_FIT:
            (feature_grads,) = torch.autograd.grad(
                head_energies.sum(), inputs, create_graph=self.training
            )
            head_forces = _ForcesThroughBackbone.apply(
                feature_grads, features, batch.pos, self.batched_jvp
            )
        out = {}
        for h, head in enumerate(self.probe.heads(self.slots[s], fit)):
            out[head.output_key("energy")] = head_energies[:, h : h + 1]
            if fit == FORCE_FIT:
                out[head.output_key("forces")] = head_forces[h].to(per_atom.dtype)
        return out

    # what a solver asks of the probe: the rows of the closed form's least squares, loading a
    # solution, one head's weights (each head its own best epoch)

    def num_features(self, s: int = -1) -> int:
        """Features per closed-form head of slot ``s`` (the columns of its least squares)."""
        return self.heads[ENERGY_FIT][s].features.num_features

    @property
    def num_types(self) -> int:
        return self.shifts[ENERGY_FIT].shape[1]

    def mixed_irreps(self, s: int = -1) -> str:
        """The irreps a closed-form head's features of slot ``s`` are built from."""
        return str(self.heads[ENERGY_FIT][s].features.irreps_mix)

    @property
    def parameters_per_head(self) -> int:
        return self.heads[ENERGY_FIT][-1].parameters_per_head

    def describe_features(self) -> str:
        """``84 features per head (8x0e+...)``: what a closed-form head reads (of each tap)."""
        return ", ".join(f"{self.num_features(t)} features per head ({self.mixed_irreps(t)})"
                         + (f" at {tap}" if self.num_taps > 1 else "")
                         for t, tap in enumerate(self._backbones[0].taps))  # fmt: skip

    def least_squares_rows(self, data) -> list["LeastSquaresRows"]:
        """Every slot's rows of the closed form's least squares for a batch, in float64.

        Energy rows: the features summed over the readout atoms, per atom. With the force
        spectrum, force rows: the heads' forces along directions ``v``, minus the derivative of
        the features along ``v``, one Jacobian-vector product through the backbone each (for
        all its taps at once); every force component, or a sketch of random directions
        (``force_directions``, :meth:`force_sketch`).
        """
        batch = self.read(data, torch.float64)
        num_atoms = batch.data[AtomicDataDict.NUM_NODES_KEY].view(-1, 1).to(torch.float64)
        counts = batch.readout.new_zeros(batch.num_frames, self.num_types)
        counts.index_put_((batch.frames, batch.types), batch.readout.squeeze(-1), accumulate=True)

        def frame_features(s, features):  # (..., frames, K)
            harmonics = self.slot_harmonics(s, batch.harmonics)
            return batch.frame_sum(self.heads[ENERGY_FIT][s].features(
                features.to(torch.float64), harmonics) * batch.readout)  # fmt: skip

        tangents = self.force_sketch(batch) if self.with_forces else []
        rows = []
        for b, (taps, energy, forces) in enumerate(self.backbone_outputs(batch.data)):
            outputs = backbone_predictions(b, energy, forces)
            heads = self.probe.heads((b, None), ENERGY_FIT)  # (the same targets in every set)

            def targets(kind, heads=heads, outputs=outputs):  # (values, [3,] heads)
                return torch.stack(
                    [head.target(outputs, batch.data, kind, self.probe.target)
                     .to(torch.float64) for head in heads], dim=-1)  # fmt: skip

            with torch.no_grad():
                energy_targets = targets("energy")[:, 0] / num_atoms
                if self.with_forces:
                    along = batch.frame_sum(torch.einsum(
                        "snc,nch->snh", tangents.to(torch.float64), targets("forces")))  # fmt: skip
            if self.with_forces:  # every tap's derivatives along every direction, at once
                derivatives = feature_derivatives(torch.cat(taps, dim=-1), batch.pos, tangents,
                                                  self.batched_jvp)  # fmt: skip
                derivatives = derivatives.to(torch.float64).split(
                    [features.shape[-1] for features in taps], dim=-1
                )
            for t, features in enumerate(taps):
                s = b * len(taps) + t
                with torch.no_grad():
                    x = features.detach().to(torch.float64)
                    energy_rows = frame_features(s, x) / num_atoms
                if not self.with_forces:
                    rows.append(LeastSquaresRows(energy_rows, counts / num_atoms, energy_targets))
                    continue
                with torch.no_grad():  # the feature map's derivatives

                    def derivative(d, s=s, x=x):  # of the per-frame features along d
                        return torch.func.jvp(lambda z: frame_features(s, z), (x,), (d,))[1]

                    along_features = torch.cat(  # directions in chunks: (S, atoms, K) is large
                        [torch.func.vmap(derivative)(chunk) for chunk in derivatives[t].split(16)]
                    )
                rows.append(LeastSquaresRows(energy_rows, counts / num_atoms, energy_targets,
                                             -along_features, along, 3 * num_atoms.view(-1)))
        return rows

    def force_sketch(self, batch: "ProbeBatch") -> torch.Tensor:
        """``(directions, atoms, 3)``: each frame's force directions (``sketch_directions``,
        from the frame's own digest), zero past its own."""
        pos, probe = batch.pos, self.probe
        sizes = batch.data[AtomicDataDict.NUM_NODES_KEY].view(-1).tolist()
        sketches = [
            sketch_directions(len(p), probe.force_rows(len(p)), frame_digest(p, t, probe.seed))
            for p, t in zip(pos.split(sizes), batch.types.split(sizes), strict=True)
        ]
        tangents = torch.zeros(max(len(v) for v in sketches), *pos.shape, dtype=torch.float64)
        start = 0
        for directions in sketches:
            tangents[: len(directions), start : start + directions.shape[1]] = directions
            start += directions.shape[1]
        return tangents.to(device=pos.device, dtype=pos.dtype)

    def load_solution(self, fit: str, s: int, weights, intercepts, alpha) -> None:
        """Set slot ``s``'s closed-form set's ``(features, heads)`` weights, ``(types,
        heads)`` per-type energies and ``(heads,)`` ridge strengths."""
        with torch.no_grad():
            heads = self.heads[fit][s]
            heads.weights.copy_(weights)
            heads.alpha.copy_(alpha)
            self.shifts[fit][s] = intercepts

    def ridge_strengths(self, fit: str) -> list[list[float]] | None:
        """Each closed-form head's ridge strength, per slot (``None`` with ``sgd``)."""
        if self.probe.solver != "closed_form":
            return None
        return [heads.alpha.tolist() for heads in self.heads[fit]]

    def head_state(self, fit: str, s: int, h: int) -> dict:
        """A copy of head ``h`` of slot ``s`` (its slice of every weight of its set)."""
        heads = self.heads[fit][s]
        state = {name: p[h].detach().clone() for name, p in heads.named_parameters()}
        state["shift"] = self.shifts[fit][s, :, h].detach().clone()
        return state

    def load_head_state(self, fit: str, s: int, h: int, state: dict) -> None:
        with torch.no_grad():
            for name, parameter in self.heads[fit][s].named_parameters():
                parameter[h] = state[name]
            self.shifts[fit][s, :, h] = state["shift"]


class LeastSquaresRows(NamedTuple):
    """One backbone's rows of the closed form's least squares for a batch (float64).

    Attributes:
        energy_rows: ``(frames, K)`` the features summed over the readout atoms, per atom
        type_counts: ``(frames, types)`` readout atoms of each type, per atom
        energy_targets: ``(frames, heads)`` each head's energy target, per atom
        force_rows: ``(directions, frames, K)`` minus the features' derivative along each
          force direction (``None`` without the force spectrum)
        force_targets: ``(directions, frames, heads)`` each head's force target along it
        force_components: ``(frames,)`` each frame's force components
    """

    energy_rows: torch.Tensor
    type_counts: torch.Tensor
    energy_targets: torch.Tensor
    force_rows: torch.Tensor | None = None
    force_targets: torch.Tensor | None = None
    force_components: torch.Tensor | None = None


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
    def forward(ctx, feature_grads, features, pos, batched=None):
        ctx.graph = features, pos  # the backbone's graph, kept for the backward
        ctx.dtype, ctx.batched = feature_grads.dtype, batched
        forces = [
            torch.autograd.grad(features, pos, g.to(features.dtype), retain_graph=True)[0]
            for g in feature_grads
        ]
        return -torch.stack(forces)

    @staticmethod
    def backward(ctx, grad_forces):
        features, pos = ctx.graph
        with torch.enable_grad():
            jvps = feature_derivatives(features, pos, grad_forces.to(pos.dtype), ctx.batched)
        del ctx.graph
        return -jvps.to(ctx.dtype), None, None, None


# directions a batched Jacobian-vector product takes at once (bounds its memory)
JVP_CHUNK = 64


def feature_derivatives(features, pos, tangents, batched: bool | None = None) -> torch.Tensor:
    r"""``(S, atoms, channels)``: the derivatives :math:`J t_s` of the tapped features along
    each tangent :math:`t_s` of the positions (``(S, atoms, 3)``).

    Jacobian-vector products through the backbone's reverse-mode graph, as the derivative of
    :math:`u \mapsto J^\top u`. ``batched`` (``None``: on any device but the CPU):
    ``JVP_CHUNK`` directions in one vmapped backward pass, a few kernel launches for all of
    them; else one backward pass a direction, which measures faster on the CPU
    (``nequip-spectral-benchmark --jvp loop|batched``).
    """
    batched = batched if batched is not None else pos.device.type != "cpu"
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
