"""Gradient descent with independent heads: each head keeps its own best epoch.

The heads of a set share tensors (the head is a batch dimension of every weight) but are
independent problems; a checkpoint chosen on their summed validation loss would give every
head the epoch that is best on average. :class:`BestHeads` keeps, for each head, the weights of
the epoch with its own lowest validation loss, and puts them in the checkpoints.
"""

import contextlib


class BestHeads:
    """Each SPN head's weights at its own best validation loss (``solver: sgd``).

    Args:
        probe_model: the :class:`~nequip_spectral.nn.SpectralProbeModel`
        coeffs: ``{metric name: weight}`` of the loss (``b0_f_l4_forces_mse: 1.0``)
        prefix: what the validation metrics' names start with (``val0_epoch/``)
    """

    def __init__(self, probe_model, coeffs: dict, prefix: str):
        self.model, self.coeffs, self.prefix = probe_model, coeffs, prefix
        self.best = {}  # (fit, slot, head index) -> (loss, the head's weights)

    def head_loss(self, metrics, head) -> float | None:
        """The head's weighted validation loss from the epoch's ``metrics`` (name -> value)."""
        mine = f"b{head.backbone}_{head.name}_"
        values = [
            coeff * float(metrics[self.prefix + name])
            for name, coeff in self.coeffs.items()
            if name.startswith(mine) and self.prefix + name in metrics
        ]
        return sum(values) if values else None

    def update(self, metrics) -> None:
        """Keep every head whose validation loss this epoch is its lowest so far."""
        for fit in self.model.fits:
            for s, slot in enumerate(self.model.slots):
                for h, head in enumerate(self.model.probe.heads(slot, fit)):
                    loss, key = self.head_loss(metrics, head), (fit, s, h)
                    if loss is None or (key in self.best and self.best[key][0] <= loss):
                        continue
                    self.best[key] = (loss, self.model.head_state(fit, s, h))

    @contextlib.contextmanager
    def applied(self):
        """Inside the block, every head has its best weights; after it, its current ones."""
        current = {key: self.model.head_state(*key) for key in self.best}
        for key, (_, state) in self.best.items():
            self.model.load_head_state(*key, state)
        try:
            yield
        finally:
            for key, state in current.items():
                self.model.load_head_state(*key, state)

    def state_dict(self) -> list:
        """The best epochs so far, for a checkpoint: ``[(fit, slot, head), loss, weights]``."""
        return [[list(key), loss, state] for key, (loss, state) in self.best.items()]

    def load_state_dict(self, state: list) -> None:
        self.best = {tuple(key): (loss, weights) for key, loss, weights in state}
