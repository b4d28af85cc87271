"""The offline dataset generators (no part of the plugin): aspirin with GFN2-xTB labels
(:mod:`~nequip_spectral.generators.aspirin`), the five-fold (C5) ring test system of the
calibration (:mod:`~nequip_spectral.generators.c5_ring`) and the periodic EMT materials
(:mod:`~nequip_spectral.generators.materials`), sharing a Langevin recorder
(:mod:`~nequip_spectral.generators.md`). The bundled aspirin file is
``nequip_spectral.data.BUNDLED_ASPIRIN``."""

from .aspirin import generate_aspirin
from .materials import MATERIALS, generate_material

__all__ = [
    "MATERIALS",
    "generate_aspirin",
    "generate_material",
]
