"""The data fields this package adds to ``AtomicDataDict``, registered once on ``import nequip``.

The injected signal of every probed degree ``l`` has its own pair of fields, so that NequIP's
batching, metrics and loss handle each ``l`` like any other label.
"""

from typing import Final

from nequip.data import register_fields

MAX_PROBE_L: Final[int] = 24  # highest probed degree with registered fields

MARKED_DIRECTION_KEY: Final[str] = "spectral_direction"  # (1, 3) | unit marked direction n
# (num_atoms, 1) int64 | 1 for the frame's marked centers (spectral_probe.center_fraction)
MARKED_CENTER_KEY: Final[str] = "spectral_center"


def injected_energy_key(l: int) -> str:
    """``(1, 1)`` graph field: the injected energy ``eps * s_l`` of a frame."""
    return f"spectral_energy_l{l}"


def injected_forces_key(l: int) -> str:
    """``(num_atoms, 3)`` node field: the injected forces ``-eps * grad s_l``."""
    return f"spectral_forces_l{l}"


def null_energy_key(l: int) -> str:
    """``(1, 1)`` graph field: ``eps * s_l`` along the frame's null direction, one drawn
    independently of the marked one (what the null heads are fitted to)."""
    return f"spectral_null_energy_l{l}"


def null_forces_key(l: int) -> str:
    """``(num_atoms, 3)`` node field: ``-eps * grad s_l`` along the null direction."""
    return f"spectral_null_forces_l{l}"


_PROBED = range(MAX_PROBE_L + 1)
register_fields(
    graph_fields=[MARKED_DIRECTION_KEY]
    + [key(l) for key in (injected_energy_key, null_energy_key) for l in _PROBED],
    node_fields=[MARKED_CENTER_KEY]
    + [key(l) for key in (injected_forces_key, null_forces_key) for l in _PROBED],
    long_fields=[MARKED_CENTER_KEY],
)


# Outputs of the probe model, registered when it is built (their number depends on the
# backbones): backbone ``b``'s own prediction, and each SPN head's energy and forces
# (:class:`~nequip_spectral.heads.Head` names them).


def backbone_energy_key(b: int) -> str:  # (num_frames, 1) | frozen backbone energy B(x)
    return f"spn_backbone_energy_b{b}"


def backbone_forces_key(b: int) -> str:  # (num_atoms, 3) | frozen backbone forces
    return f"spn_backbone_forces_b{b}"


def head_energy_key(b: int, head: str) -> str:  # (num_frames, 1) | SPN head energy
    return f"spn_energy_b{b}_{head}"


def head_forces_key(b: int, head: str) -> str:  # (num_atoms, 3) | SPN head forces
    return f"spn_forces_b{b}_{head}"
