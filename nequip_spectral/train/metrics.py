"""Loss and metrics of all SPN heads, as a NequIP ``MetricsManager``."""

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


_FIELDS = {  # label, injected field, backbone prediction
    "energy": (AtomicDataDict.TOTAL_ENERGY_KEY, injected_energy_key, backbone_energy_key),
    "forces": (AtomicDataDict.FORCE_KEY, injected_forces_key, backbone_forces_key),
}


def head_target(outputs, data, backbone: int, l, kind: str, target: str) -> torch.Tensor:
    """What head ``l`` (``None``: the control head) of ``backbone`` is trained to predict.

    ``residual``: the perturbed label minus the frozen backbone's prediction,
    ``y + eps s_l - B(x)`` (``y - B(x)`` for the control head). ``injected``: ``eps s_l``
    (zero for the control head).
    """
    label, injected_key, backbone_key = _FIELDS[kind]
    injected = 0.0 if l is None else data[injected_key(l)]
    if target == "injected":
        return torch.zeros_like(data[label]) + injected
    return data[label] + injected - outputs[backbone_key(backbone)]


class SpectralHeadField(BaseModifier):
    """The ``(output, target)`` pair of one SPN head, for a ``MetricsManager`` entry.

    Args:
        backbone: index of the backbone in ``spectral_probe.backbones``
        l: the probed degree, or ``None`` for the control head
        kind: ``forces`` or ``energy``
        target: ``residual`` or ``injected``
    """

    def __init__(self, backbone: int, l, kind: str, target: str):
        name = CONTROL_HEAD if l is None else head_name(l)
        key = head_forces_key if kind == "forces" else head_energy_key
        super().__init__(key(backbone, name))
        self.backbone, self.l, self.kind, self.target = backbone, l, kind, target
        self.name = f"b{backbone}_{name}_{kind}"

    def __call__(self, outputs, data):
        prediction = outputs[self.field]
        target = head_target(outputs, data, self.backbone, self.l, self.kind, self.target)
        return prediction, target.to(prediction.dtype)

    def __str__(self) -> str:
        return self.name

    @property
    def type(self) -> str:
        return "node" if self.kind == "forces" else "graph"


def SpectralProbeMetrics(
    probe, energy_coeff: float = 1.0, forces_coeff: float = 1.0, type_names=None
) -> MetricsManager:
    """Mean squared errors of every SPN head against its target, energies and forces.

    Serves as the ``loss`` and as ``val_metrics`` / ``test_metrics``; entries are named
    ``b{backbone}_{head}_{kind}_mse`` (e.g. ``b0_l4_forces_mse``, ``b0_none_energy_mse``), so
    loggers and the progress bar show each ``l``. Energies are per frame. A kind whose
    coefficient is zero is left out.

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
                field = SpectralHeadField(backbone, l, kind, probe.target)
                metrics.append(
                    {
                        "name": f"{field}_mse",
                        "field": field,
                        "coeff": coeffs[kind],
                        "metric": MeanSquaredError(),
                    }
                )
    return MetricsManager(metrics, type_names=type_names)
