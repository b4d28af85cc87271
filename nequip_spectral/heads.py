"""The SPN heads: what each one is, its name, its keys and its target, made in one place.

Each backbone has one set of heads per spectrum: the energy spectrum's (``e``), fitted to
energies alone, and with ``spectral_probe.force_spectrum`` the force spectrum's (``f``), fitted
to energies and forces. A set holds a head per probed ``l``, with the closed form a null head
per ``l > 0``, and the control head last (:meth:`SpectralProbeConfig.head_roles
<nequip_spectral.config.SpectralProbeConfig.head_roles>`).
"""

import dataclasses
from typing import Final

import torch
from nequip.data import AtomicDataDict

from ._keys import (
    backbone_energy_key,
    backbone_forces_key,
    head_energy_key,
    head_forces_key,
    injected_energy_key,
    injected_forces_key,
    null_energy_key,
    null_forces_key,
)

KINDS: Final[tuple] = ("forces", "energy")  # what a head predicts; forces, the primary, first
ENERGY_FIT: Final[str] = "e"  # the energy spectrum's heads: fitted to energies alone
FORCE_FIT: Final[str] = "f"  # the force spectrum's: fitted to energies and forces
SPECTRUM_FIT: Final[dict] = {"energy": ENERGY_FIT, "forces": FORCE_FIT}  # kind -> its heads
PROBE, NULL, CONTROL = "probe", "null", "control"

_LABEL = {"energy": AtomicDataDict.TOTAL_ENERGY_KEY, "forces": AtomicDataDict.FORCE_KEY}
_SIGNAL = {  # role -> kind -> key of the signal the head is to recover
    PROBE: {"energy": injected_energy_key, "forces": injected_forces_key},
    NULL: {"energy": null_energy_key, "forces": null_forces_key},
}
_BACKBONE = {"energy": backbone_energy_key, "forces": backbone_forces_key}
_OUTPUT = {"energy": head_energy_key, "forces": head_forces_key}


@dataclasses.dataclass(frozen=True)
class Head:
    """One SPN head.

    Args:
        backbone: index of its backbone in ``spectral_probe.backbones``
        tap: index of the features it reads among the backbone's taps (``feature_tap``);
          ``None`` when there is one tap
        fit: its set: ``e`` (energy spectrum) or ``f`` (force spectrum)
        l: the probed degree (``None`` for the control head)
        role: ``probe`` (recovers the signal injected along the marked direction), ``null``
          (fitted to the signal along the frame's null direction while it reads the marked
          one: nothing to recover, its reading is the floor chance reaches at ``l``) or
          ``control`` (no injection: the backbone's own error)
    """

    backbone: int
    fit: str
    l: int | None
    role: str = PROBE
    tap: int | None = None

    @property
    def name(self) -> str:
        """``e_l4``, ``e_null4``, ``e_none`` (``t1_e_l4``: at the second tap): the head
        within its backbone."""
        at = "" if self.tap is None else f"t{self.tap}_"
        if self.role == CONTROL:
            return f"{at}{self.fit}_none"
        return f"{at}{self.fit}_{'null' if self.role == NULL else 'l'}{self.l}"

    @property
    def intercept(self) -> bool:
        """Whether it has per-type energies of its own: the control head and ``l = 0`` only.
        The injected part of an ``l > 0`` head averages to zero over directions (as ``P_l``
        does), so an intercept of its own would fit noise."""
        return self.role == CONTROL or (self.role == PROBE and self.l == 0)

    def output_key(self, kind: str) -> str:
        """The probe model's output field of its energy or forces."""
        return _OUTPUT[kind](self.backbone, self.name)

    def signal_key(self, kind: str) -> str | None:
        """The field of the injected signal it is to recover (``None``: the control head)."""
        return None if self.role == CONTROL else _SIGNAL[self.role][kind](self.l)

    def metric_name(self, kind: str, per_atom: bool = False) -> str:
        """``b0_f_l4_forces``: its entry in the loss and the metrics (before ``_mse``)."""
        return f"b{self.backbone}_{self.name}_{'per_atom_' if per_atom else ''}{kind}"

    def target(self, outputs, data, kind: str, target: str) -> torch.Tensor:
        """What it is trained to predict. ``residual``: the perturbed label minus the frozen
        backbone's prediction, ``y + eps s_l - B(x)`` (``y - B(x)`` for the control head).
        ``injected``: ``eps s_l`` (zero for the control head)."""
        signal = self.signal_key(kind)
        injected = 0.0 if signal is None else data[signal]
        if target == "injected":
            return torch.zeros_like(data[_LABEL[kind]]) + injected
        return data[_LABEL[kind]] + injected - outputs[_BACKBONE[kind](self.backbone)]


def slots(num_backbones: int, num_taps: int) -> list[tuple]:
    """``(backbone, tap)`` of every set of heads, backbone-major; the tap is ``None`` when
    there is one (the heads keep the names of a one-tap run)."""
    taps = [None] if num_taps == 1 else range(num_taps)
    return [(b, t) for b in range(num_backbones) for t in taps]
