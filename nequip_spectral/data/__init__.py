"""Data: the ``SpectralInjection`` transform and the offline aspirin dataset."""

from .aspirin import BUNDLED_ASPIRIN, generate_aspirin
from .injection import SpectralInjection

__all__ = ["BUNDLED_ASPIRIN", "SpectralInjection", "generate_aspirin"]
