"""Gradient descent with independent heads: each head keeps its own best epoch.

The heads of a set share tensors (the head is a batch dimension of every weight) but are
independent problems; a checkpoint chosen on their summed validation loss would give every
head the epoch that is best on average. :class:`BestHeads` keeps, for each head, the weights of
the epoch with its own lowest validation loss, and puts them back when training ends.
"""

import torch

from .._keys import head_name


class BestHeads:
    """Each SPN head's weights at its own best validation loss (``solver: sgd``).

    Args:
        probe_model: the :class:`~nequip_spectral.nn.SpectralProbeModel`
        loss: its ``SpectralProbeMetrics`` (the weight of each metric)
    """

    def __init__(self, probe_model, loss):
        self.model = probe_model
        self.coeffs = {name: float(entry.coeff or 0.0) for name, entry in loss.entries.items()}
        self.best = {}  # (fit, backbone, head) -> (loss, {parameter name: slice})

    def head_loss(self, metrics, fit: str, b: int, l) -> float | None:
        """The head's weighted validation loss from the epoch's ``metrics`` (name -> value)."""
        prefix = f"b{b}_{head_name(l, fit)}_"
        values = [
            coeff * float(metrics[f"val0_epoch/{name}"])
            for name, coeff in self.coeffs.items()
            if name.startswith(prefix) and f"val0_epoch/{name}" in metrics
        ]
        return sum(values) if values else None

    def update(self, metrics) -> None:
        """Keep every head whose validation loss this epoch is its lowest so far."""
        for fit, per_backbone in self.model.heads.items():
            for b, heads in enumerate(per_backbone):
                for h, l in enumerate(self.model.targets):
                    loss = self.head_loss(metrics, fit, b, l)
                    key = (fit, b, h)
                    if loss is None or (key in self.best and self.best[key][0] <= loss):
                        continue
                    slices = {name: p[h].detach().clone() for name, p in heads.named_parameters()}
                    slices["shift"] = self.model.shifts[fit][b, :, h].detach().clone()
                    self.best[key] = (loss, slices)

    def restore(self) -> None:
        """Put every head's best weights back into the model."""
        with torch.no_grad():
            for (fit, b, h), (_, slices) in self.best.items():
                heads = self.model.heads[fit][b]
                for name, parameter in heads.named_parameters():
                    parameter[h] = slices[name]
                self.model.shifts[fit][b, :, h] = slices["shift"]

    def state_dict(self) -> list:
        """The best epochs so far, for a checkpoint: ``[(fit, backbone, head), loss, weights]``."""
        return [[list(key), loss, slices] for key, (loss, slices) in self.best.items()]

    def load_state_dict(self, state: list) -> None:
        self.best = {tuple(key): (loss, slices) for key, loss, slices in state}
