"""Loss and metrics of all SPN heads, as a NequIP ``MetricsManager``."""

from collections.abc import Callable
from typing import NamedTuple

import torch
from nequip.data import AtomicDataDict, BaseModifier
from nequip.train import MeanSquaredError, MetricsManager

from .._keys import (
    CONTROL_HEAD,
    backbone_energy_key,
    backbone_forces_key,
    head_energy_key,
    head_forces_key,
    head_name,
    injected_energy_key,
    injected_forces_key,
)
from ..config import SpectralProbeConfig

KINDS = ("forces", "energy")


class KindFields(NamedTuple):
    """The fields of one kind: its label, and keys of the injection, backbone and heads."""

    label: str
    injected: Callable[[int], str]  # l -> key
    backbone: Callable[[int], str]  # backbone index -> key
    head: Callable[[int, str], str]  # (backbone index, head name) -> key


FIELDS = {
    "energy": KindFields(
        AtomicDataDict.TOTAL_ENERGY_KEY, injected_energy_key, backbone_energy_key, head_energy_key
    ),
    "forces": KindFields(
        AtomicDataDict.FORCE_KEY, injected_forces_key, backbone_forces_key, head_forces_key
    ),
}


def head_target(outputs, data, backbone: int, l, kind: str, target: str) -> torch.Tensor:
    """What head ``l`` (``None``: the control head) of ``backbone`` is trained to predict.

    ``residual``: the perturbed label minus the frozen backbone's prediction,
    ``y + eps s_l - B(x)`` (``y - B(x)`` for the control head). ``injected``: ``eps s_l``
    (zero for the control head).
    """
    fields = FIELDS[kind]
    injected = 0.0 if l is None else data[fields.injected(l)]
    if target == "injected":
        return torch.zeros_like(data[fields.label]) + injected
    return data[fields.label] + injected - outputs[fields.backbone(backbone)]


class SpectralHeadField(BaseModifier):
    """The ``(output, target)`` pair of one SPN head, for a ``MetricsManager`` entry.

    Args:
        backbone: index of the backbone in ``spectral_probe.backbones``
        l: the probed degree, or ``None`` for the control head
        kind: ``forces`` or ``energy``
        target: ``residual`` or ``injected``
        per_atom: divide energies by the number of atoms
    """

    def __init__(self, backbone: int, l, kind: str, target: str, per_atom: bool = False):
        name = CONTROL_HEAD if l is None else head_name(l)
        super().__init__(FIELDS[kind].head(backbone, name))
        self.backbone, self.l, self.kind, self.target = backbone, l, kind, target
        self.per_atom = per_atom and kind == "energy"
        self.name = f"b{backbone}_{name}_{'per_atom_' if self.per_atom else ''}{kind}"

    def __call__(self, outputs, data):
        if self.field not in outputs:
            raise KeyError(
                f"the probe computed no '{self.field}': with `fit_forces: false` the model "
                "computes no head forces in training, so give the loss `forces_coeff: 0`"
            )
        prediction = outputs[self.field]
        target = head_target(outputs, data, self.backbone, self.l, self.kind, self.target)
        target = target.to(prediction.dtype)
        if self.per_atom:
            num_atoms = data[AtomicDataDict.NUM_NODES_KEY].view(-1, 1).to(prediction.dtype)
            return prediction / num_atoms, target / num_atoms
        return prediction, target

    def __str__(self) -> str:
        return self.name

    @property
    def type(self) -> str:
        return "node" if self.kind == "forces" else "graph"


def SpectralProbeMetrics(
    probe,
    energy_coeff: float = 1.0,
    forces_coeff: float = 1.0,
    per_atom_energy: bool = True,
    type_names=None,
) -> MetricsManager:
    """Mean squared errors of every SPN head against its target, energies and forces.

    Serves as the ``loss`` and as ``val_metrics`` / ``test_metrics``; entries are named
    ``b{backbone}_{head}_{kind}_mse`` (e.g. ``b0_l4_forces_mse``,
    ``b0_none_per_atom_energy_mse``), so loggers and the progress bar show each ``l``. As in
    NequIP's ``EnergyForceLoss``, energies are per atom by default (per-frame energy errors
    would outweigh force errors by the square of the atom count). A kind whose coefficient is
    zero is left out.

    .. code-block:: yaml

      training_module:
        loss:
          _target_: nequip_spectral.SpectralProbeMetrics
          probe: ${spectral_probe}
          energy_coeff: 1.0
          forces_coeff: 1.0

    Args:
        probe: the ``spectral_probe:`` block
        energy_coeff: weight of the energy MSEs in ``weighted_sum``
        forces_coeff: weight of the force MSEs in ``weighted_sum``
        per_atom_energy: compare energies per atom
        type_names: passed by NequIP (unused)
    """
    probe = SpectralProbeConfig.from_block(probe)
    coeffs = {"forces": forces_coeff, "energy": energy_coeff}
    metrics = []
    for backbone in range(len(probe.backbones)):
        for l in [*probe.l_values, None]:
            for kind in KINDS:
                if coeffs[kind] == 0:
                    continue
                field = SpectralHeadField(backbone, l, kind, probe.target, per_atom_energy)
                metrics.append(
                    {
                        "name": f"{field}_mse",
                        "field": field,
                        "coeff": coeffs[kind],
                        "metric": MeanSquaredError(),
                    }
                )
    return MetricsManager(metrics, type_names=type_names)
