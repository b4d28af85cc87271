"""Modules: the SPN heads (sgd and closed form) and the probe that runs them on backbones."""

from .polynomial import LinearHeads, PolynomialFeatures
from .probe import FrozenBackbone, SpectralProbeModel
from .spn import SPNHeads

__all__ = [
    "FrozenBackbone",
    "LinearHeads",
    "PolynomialFeatures",
    "SPNHeads",
    "SpectralProbeModel",
]
