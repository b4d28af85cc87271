"""Data: the ``SpectralInjection`` transform and the bundled aspirin dataset. The offline
dataset generators are in :mod:`nequip_spectral.generators`."""

from pathlib import Path

from .injection import SpectralInjection, frames_from_ase

# made by ``nequip-spectral-make-aspirin`` (:mod:`nequip_spectral.generators.aspirin`)
BUNDLED_ASPIRIN = Path(__file__).parent / "aspirin_gfn2xtb_500K.extxyz"

__all__ = [
    "BUNDLED_ASPIRIN",
    "SpectralInjection",
    "frames_from_ase",
]
