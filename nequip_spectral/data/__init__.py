"""Data: the ``SpectralInjection`` transform and the offline aspirin dataset."""

from .aspirin import BUNDLED_ASPIRIN, generate_aspirin
from .injection import SpectralInjection, frames_from_ase

__all__ = ["BUNDLED_ASPIRIN", "SpectralInjection", "frames_from_ase", "generate_aspirin"]
