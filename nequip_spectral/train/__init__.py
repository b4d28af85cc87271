"""Training: the heads' loss and metrics, the SpectralMetrics callback and the report."""

from .callback import SpectralMetrics
from .metrics import SpectralHeadField, SpectralProbeMetrics

__all__ = ["SpectralHeadField", "SpectralMetrics", "SpectralProbeMetrics"]
