"""Data: the ``SpectralInjection`` transform, the offline aspirin dataset and the periodic
EMT materials."""

from .aspirin import BUNDLED_ASPIRIN, generate_aspirin
from .injection import SpectralInjection, frames_from_ase
from .materials import MATERIALS, generate_material

__all__ = [
    "BUNDLED_ASPIRIN",
    "MATERIALS",
    "SpectralInjection",
    "frames_from_ase",
    "generate_aspirin",
    "generate_material",
]
