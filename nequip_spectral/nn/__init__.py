"""Modules: the SPN heads (sgd and closed form) and the probe that runs them on backbones."""

from .polynomial import LinearHeads, PolynomialFeatures
from .probe import SpectralProbeModel
from .spn import SPNHeads
from .tap import FrozenBackbone

__all__ = [
    "FrozenBackbone",
    "LinearHeads",
    "PolynomialFeatures",
    "SPNHeads",
    "SpectralProbeModel",
]
