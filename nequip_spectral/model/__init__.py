"""The model builder of the probe."""

from ..nn.tap import freeze_and_tap, load_frozen_backbone
from .frozen_spn import FrozenBackboneSPN

__all__ = ["FrozenBackboneSPN", "freeze_and_tap", "load_frozen_backbone"]
