"""Training: the probe's training module, the heads' loss and metrics, the SpectralMetrics
callback, and the Hydra callbacks of the example configs."""

from .callback import SpectralMetrics
from .lightning import SpectralProbeLightningModule
from .metrics import SpectralHeadField, SpectralProbeMetrics

__all__ = [
    "SpectralHeadField",
    "SpectralMetrics",
    "SpectralProbeLightningModule",
    "SpectralProbeMetrics",
]
