"""Modules: the SPN head and the probe that runs it on frozen backbones."""

from .probe import FrozenBackbone, SpectralProbeModel
from .spn import SPNHeads

__all__ = ["FrozenBackbone", "SPNHeads", "SpectralProbeModel"]
