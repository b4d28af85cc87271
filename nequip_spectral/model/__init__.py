"""The model builder of the probe."""

from .frozen_spn import FrozenBackboneSPN, freeze_and_tap, load_frozen_backbone

__all__ = ["FrozenBackboneSPN", "freeze_and_tap", "load_frozen_backbone"]
