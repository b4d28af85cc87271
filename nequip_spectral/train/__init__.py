"""Training: the probe's training module, the heads' loss, the callback that writes the
report, and the Hydra callbacks of the example configs."""

from .lightning import SpectralProbeLightningModule
from .loss import SpectralHeadField, SpectralProbeLoss, SpectralProbeMetrics
from .report_writer import SpectralMetrics, SpectralReportWriter

__all__ = [
    "SpectralHeadField",
    "SpectralMetrics",
    "SpectralProbeLightningModule",
    "SpectralProbeLoss",
    "SpectralProbeMetrics",
    "SpectralReportWriter",
]
