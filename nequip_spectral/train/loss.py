"""The heads' loss (and metrics): mean squared errors of every SPN head, as a NequIP
``MetricsManager``."""

from nequip.data import AtomicDataDict, BaseModifier
from nequip.train import MeanSquaredError, MetricsManager

from ..config import SpectralProbeConfig
from ..heads import ENERGY_FIT, FORCE_FIT, Head


class SpectralHeadField(BaseModifier):
    """The ``(output, target)`` pair of one SPN head, for a ``MetricsManager`` entry.

    Args:
        head: the :class:`~nequip_spectral.heads.Head`
        kind: ``forces`` or ``energy``
        target: ``residual`` or ``injected``
        per_atom: divide energies by the number of atoms
    """

    def __init__(self, head: Head, kind: str, target: str, per_atom=False):
        super().__init__(head.output_key(kind))
        self.head, self.kind, self.target = head, kind, target
        self.per_atom = per_atom and kind == "energy"
        self.name = head.metric_name(kind, self.per_atom)

    def __call__(self, outputs, data):
        prediction = outputs[self.field]
        target = self.head.target(outputs, data, self.kind, self.target).to(prediction.dtype)
        if self.per_atom:
            num_atoms = data[AtomicDataDict.NUM_NODES_KEY].view(-1, 1).to(prediction.dtype)
            return prediction / num_atoms, target / num_atoms
        return prediction, target

    def __str__(self) -> str:
        return self.name

    @property
    def type(self) -> str:
        return "node" if self.kind == "forces" else "graph"


def SpectralProbeLoss(
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
    and ``forces_coeff`` (the closed-form solve is given the same weights). Entries
    are named ``b{backbone}_{head}_{kind}_mse`` (e.g. ``b0_f_l4_forces_mse``,
    ``b0_e_none_per_atom_energy_mse``; with several taps ``b0_t1_f_l4_forces_mse``). As in
    NequIP's ``EnergyForceLoss``, energies are per atom by default (per-frame energy errors
    would outweigh force errors by the square of the atom count).

    .. code-block:: yaml

      training_module:
        loss:
          _target_: nequip_spectral.SpectralProbeLoss
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
    for backbone, tap in probe.slots():
        for l, role in probe.head_roles:
            for (fit, kind), coeff in coeffs.items():
                if coeff == 0:
                    continue
                field = SpectralHeadField(Head(backbone, fit, l, role, tap), kind, probe.target,
                                          per_atom_energy)  # fmt: skip
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
        if isinstance(field, SpectralHeadField) and field.head.fit == FORCE_FIT:
            weights[field.kind] = float(entry.coeff or 0.0)
    if weights == {"energy": 0.0, "forces": 0.0}:
        return 1.0, 0.0
    return weights["energy"], weights["forces"]


SpectralProbeMetrics = SpectralProbeLoss  # its name in earlier versions' configs
