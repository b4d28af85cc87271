"""nequip-spectral: which angular frequencies a trained NequIP force field preserves.

``import nequip`` loads this module through the ``nequip.extension`` entry point while
``nequip.utils`` is still half-initialised, so it only registers the data fields and exposes
the plugins lazily (PEP 562): ``_target_: nequip_spectral.SpectralInjection`` still resolves.
"""

import importlib

from . import _keys  # noqa: F401  (registers the data fields)
from ._version import __version__

_PUBLIC = {
    "SpectralProbeConfig": "nequip_spectral.config",
    "SpectralInjection": "nequip_spectral.data",
    "FrozenBackboneSPN": "nequip_spectral.model",
    "SpectralProbeLoss": "nequip_spectral.train",
    "SpectralReportWriter": "nequip_spectral.train",
    "SpectralProbeLightningModule": "nequip_spectral.train",
    # their names in earlier versions' configs
    "SpectralProbeMetrics": "nequip_spectral.train",
    "SpectralMetrics": "nequip_spectral.train",
}

__all__ = [
    "FrozenBackboneSPN",
    "SpectralInjection",
    "SpectralMetrics",
    "SpectralProbeConfig",
    "SpectralProbeLightningModule",
    "SpectralProbeLoss",
    "SpectralProbeMetrics",
    "SpectralReportWriter",
    "__version__",
]


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'nequip_spectral' has no attribute '{name}'")
