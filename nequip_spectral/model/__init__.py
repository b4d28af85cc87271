"""The model builder of the probe."""

from .frozen_spn import FrozenBackboneSPN, load_frozen_backbone

__all__ = ["FrozenBackboneSPN", "load_frozen_backbone"]
