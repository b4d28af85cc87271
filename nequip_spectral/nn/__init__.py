"""Modules: the SPN head and the probe that runs it on frozen backbones."""

from .probe import FrozenBackbone, SpectralProbeModel
from .spn import SPNHead

__all__ = ["FrozenBackbone", "SPNHead", "SpectralProbeModel"]
