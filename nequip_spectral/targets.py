"""What each SPN head is trained to predict: the fields of each kind and the head targets."""

from collections.abc import Callable
from typing import NamedTuple

import torch
from nequip.data import AtomicDataDict

from ._keys import (
    Null,
    backbone_energy_key,
    backbone_forces_key,
    head_energy_key,
    head_forces_key,
    injected_energy_key,
    injected_forces_key,
    null_energy_key,
    null_forces_key,
)

KINDS = ("forces", "energy")


class KindFields(NamedTuple):
    """The fields of one kind: its label, and keys of the injection, backbone and heads."""

    label: str
    injected: Callable[[int], str]  # l -> key
    null: Callable[[int], str]  # l -> key of the signal along the null direction
    backbone: Callable[[int], str]  # backbone index -> key
    head: Callable[[int, str], str]  # (backbone index, head name) -> key

    def signal(self, head) -> str:
        """The key of the injected signal that ``head`` (``l`` or ``Null(l)``) is to recover."""
        return self.null(head.l) if isinstance(head, Null) else self.injected(head)


FIELDS = {
    "energy": KindFields(
        AtomicDataDict.TOTAL_ENERGY_KEY, injected_energy_key, null_energy_key,
        backbone_energy_key, head_energy_key,
    ),
    "forces": KindFields(
        AtomicDataDict.FORCE_KEY, injected_forces_key, null_forces_key, backbone_forces_key,
        head_forces_key,
    ),
}  # fmt: skip


def head_target(outputs, data, backbone: int, l, kind: str, target: str) -> torch.Tensor:
    """What head ``l`` (``Null(l)``: the null head; ``None``: the control head) of
    ``backbone`` is trained to predict.

    ``residual``: the perturbed label minus the frozen backbone's prediction,
    ``y + eps s_l - B(x)`` (``y - B(x)`` for the control head). ``injected``: ``eps s_l``
    (zero for the control head). A null head's ``s_l`` is along the null direction.
    """
    fields = FIELDS[kind]
    injected = 0.0 if l is None else data[fields.signal(l)]
    if target == "injected":
        return torch.zeros_like(data[fields.label]) + injected
    return data[fields.label] + injected - outputs[fields.backbone(backbone)]
