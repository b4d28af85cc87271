"""Loss and metrics of all SPN heads, as a NequIP ``MetricsManager``."""

from nequip.data import AtomicDataDict, BaseModifier
from nequip.train import MeanSquaredError, MetricsManager

from .._keys import ENERGY_FIT, FORCE_FIT, head_name
from ..config import SpectralProbeConfig
from ..targets import FIELDS, head_target


class SpectralHeadField(BaseModifier):
    """The ``(output, target)`` pair of one SPN head, for a ``MetricsManager`` entry.

    Args:
        backbone: index of the backbone in ``spectral_probe.backbones``
        l: the probed degree, ``Null(l)`` for its null head, or ``None`` for the control head
        kind: ``forces`` or ``energy``
        target: ``residual`` or ``injected``
        fit: the head's set: ``e`` (fitted to energies) or ``f`` (energies and forces)
        per_atom: divide energies by the number of atoms
    """

    def __init__(self, backbone: int, l, kind: str, target: str, fit: str, per_atom=False):
        name = head_name(l, fit)
        super().__init__(FIELDS[kind].head(backbone, name))
        self.backbone, self.l, self.kind, self.target, self.fit = backbone, l, kind, target, fit
        self.per_atom = per_atom and kind == "energy"
        self.name = f"b{backbone}_{name}_{'per_atom_' if self.per_atom else ''}{kind}"

    def __call__(self, outputs, data):
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
    """Mean squared errors of every SPN head against its target.

    Serves as the ``loss`` and as ``val_metrics`` / ``test_metrics``. The energy spectrum's
    heads (``e``) are fitted to energies alone; the force spectrum's (``f``, with
    ``spectral_probe.force_spectrum``) to energies and forces, weighted by ``energy_coeff``
    and ``forces_coeff`` (the closed-form solver reads these weights from here too). Entries
    are named ``b{backbone}_{head}_{kind}_mse`` (e.g. ``b0_f_l4_forces_mse``,
    ``b0_e_none_per_atom_energy_mse``). As in NequIP's ``EnergyForceLoss``, energies are per
    atom by default (per-frame energy errors would outweigh force errors by the square of the
    atom count).

    .. code-block:: yaml

      training_module:
        loss:
          _target_: nequip_spectral.SpectralProbeMetrics
          probe: ${spectral_probe}
          energy_coeff: 1.0
          forces_coeff: 1.0

    Args:
        probe: the ``spectral_probe:`` block
        energy_coeff: weight of the force spectrum's energy MSEs
        forces_coeff: weight of the force spectrum's force MSEs
        per_atom_energy: compare energies per atom
        type_names: passed by NequIP (unused)
    """
    probe = SpectralProbeConfig.from_block(probe)
    coeffs = {(ENERGY_FIT, "energy"): 1.0}
    if probe.force_spectrum:
        coeffs.update({(FORCE_FIT, "energy"): energy_coeff, (FORCE_FIT, "forces"): forces_coeff})
    metrics = []
    for backbone in range(len(probe.backbones)):
        for l in probe.heads:
            for (fit, kind), coeff in coeffs.items():
                if coeff == 0:
                    continue
                field = SpectralHeadField(backbone, l, kind, probe.target, fit, per_atom_energy)
                metrics.append(
                    {"name": f"{field}_mse", "field": field, "coeff": coeff,
                     "metric": MeanSquaredError()}
                )  # fmt: skip
    return MetricsManager(metrics, type_names=type_names)


def force_fit_weights(loss: MetricsManager) -> tuple[float, float]:
    """The weights of energies and forces in the force spectrum's loss (``(1, 0)`` if none)."""
    weights = {"energy": 0.0, "forces": 0.0}
    for entry in loss.entries.values():
        field = entry.field
        if isinstance(field, SpectralHeadField) and field.fit == FORCE_FIT:
            weights[field.kind] = float(entry.coeff or 0.0)
    if weights == {"energy": 0.0, "forces": 0.0}:
        return 1.0, 0.0
    return weights["energy"], weights["forces"]
