"""``SpectralProbeLightningModule``: NequIP's training module, fitting the heads as each solver
fits them."""

import warnings
from pathlib import Path

import torch
from nequip.train import NequIPLightningModule

from .._distributed import rank_and_world
from .._nequip import probe_of
from ..config import SpectralProbeError
from ..solvers.closed_form import ClosedFormFit, ExactSolve, describe_pass, describe_solution
from ..solvers.sgd import BestHeads
from .loss import force_fit_weights

BEST_HEADS_KEY = "spectral_best_heads"  # the sgd heads' best epochs, in the checkpoint
TRAINING_WEIGHTS_KEY = "spectral_training_weights"  # the sgd heads' current weights (resume)
NORMAL_EQUATIONS_FILE = "closed_form_normal_equations.pt"  # kept when a solve fails


class SpectralProbeLightningModule(NequIPLightningModule):
    """The probe's training module: it owns fitting the SPN heads.

    ``solver: closed_form``: one epoch (``trainer.max_epochs: 1``). Its training batches, and
    then the validation frames, are added to the least squares of every head
    (:class:`~nequip_spectral.solvers.closed_form.ClosedFormFit`: Lightning's progress bar
    counts the pass); after the last batch the heads are solved exactly, and the epoch's
    validation and ``ModelCheckpoint`` see the solved heads like any other epoch's. A failed
    solve leaves the collected normal equations in the run directory
    (``closed_form_normal_equations.pt``), and a rerun there solves from them.
    ``solver: sgd``: NequIP's gradient descent (the config gives the optimizer), and each head
    kept at its own best validation epoch (:class:`~nequip_spectral.solvers.sgd.BestHeads`):
    every checkpoint holds each head at its best epoch so far, and the current weights from
    which a resumed run goes on.

    .. code-block:: yaml

      training_module:
        _target_: nequip_spectral.SpectralProbeLightningModule
        loss: ...

    Args:
        **kwargs: as for :class:`nequip.train.NequIPLightningModule`
    """

    def __init__(self, *args, pass_batch_size: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if pass_batch_size is not None:  # an earlier version's option
            warnings.warn("training_module.pass_batch_size is no longer used: the closed "
                          "form's batches are the training dataloader's", stacklevel=2)  # fmt: skip
        self.solver = self.probe_model.probe.solver
        if self.solver == "sgd" and self.optimizer_config is None:
            raise SpectralProbeError(
                "spectral_probe.solver: sgd trains the heads by gradient descent and needs "
                "training_module.optimizer (with the example configs: solver=sgd)"
            )
        self.automatic_optimization = self.solver == "sgd"  # the closed form adds, then solves
        self.closed_form = None  # the closed form's data as the pass collects it
        self.best_heads = None

    @property
    def probe_model(self):
        return probe_of(self)

    def configure_optimizers(self):
        if self.solver == "closed_form":  # one step: the solve
            return ExactSolve(self.probe_model.parameters(), self._solve)
        return super().configure_optimizers()

    def on_fit_start(self) -> None:
        if self.solver == "closed_form" and self.trainer.max_epochs != 1:
            raise SpectralProbeError(
                "trainer.max_epochs: spectral_probe.solver: closed_form fits the heads in one "
                f"epoch (one pass, then the exact solve); set it to 1, not "
                f"{self.trainer.max_epochs} (the example configs' solver=closed_form does)"
            )

    def on_train_start(self) -> None:
        if self.solver == "sgd":
            if self.best_heads is None:
                self.best_heads = self._new_best_heads()
            return
        datamodule, run_directory = self.trainer.datamodule, self._run_directory()
        self.closed_form = ClosedFormFit(
            self.probe_model, datamodule.train_dataset, datamodule.val_dataset,
            saved=run_directory / NORMAL_EQUATIONS_FILE if run_directory else None,
        )  # fmt: skip

    def training_step(self, batch, batch_idx):
        if self.solver == "sgd":
            return super().training_step(batch, batch_idx)
        self.closed_form.add(batch, across_ranks=True)
        if self.trainer.is_last_batch:  # everything in: the validation frames, then the solve
            self._add_validation_frames()
            self.optimizers().step()
        return None

    def _solve(self) -> None:
        if self.trainer.is_global_zero:
            print(describe_pass(self.probe_model, *self.closed_form.frames), flush=True)
        result = self.closed_form.solve(*force_fit_weights(self.loss))
        if self.trainer.is_global_zero:
            print(describe_solution(result, self.probe_model), flush=True)

    def on_train_epoch_end(self) -> None:
        if self.solver == "sgd":  # (the closed form has no training loss to log)
            super().on_train_epoch_end()

    def _add_validation_frames(self) -> None:
        """The validation frames into the closed form, each rank every ``world``-th batch."""
        rank, world = rank_and_world()
        loaders = self.trainer.datamodule.val_dataloader()
        for loader in loaders if isinstance(loaders, list | tuple) else [loaders]:
            for number, batch in enumerate(loader):
                if number % world == rank:
                    batch = self.transfer_batch_to_device(batch, self.device, 0)
                    self.closed_form.add(batch)

    def on_validation_epoch_end(self) -> None:
        # before NequIP resets the metrics, and before ModelCheckpoint saves: a checkpoint
        # holds every epoch's choice so far
        if self.best_heads is not None and not self.trainer.sanity_checking:
            self.best_heads.update(self.val_metrics[0].compute(prefix=self.best_heads.prefix))
        super().on_validation_epoch_end()

    def on_save_checkpoint(self, checkpoint) -> None:
        if self.best_heads is not None and self.best_heads.best:
            checkpoint[BEST_HEADS_KEY] = self.best_heads.state_dict()
            checkpoint[TRAINING_WEIGHTS_KEY] = checkpoint["state_dict"]
            with self.best_heads.applied():  # the heads to test: each at its best epoch
                best = {k: v.clone() if torch.is_tensor(v) else v
                        for k, v in self.state_dict().items()}  # fmt: skip
            checkpoint["state_dict"] = best

    def on_load_checkpoint(self, checkpoint) -> None:
        if BEST_HEADS_KEY in checkpoint:
            self.best_heads = self._new_best_heads()
            self.best_heads.load_state_dict(checkpoint[BEST_HEADS_KEY])
            if self._trainer is not None and self.trainer.training:  # resumed: go on
                checkpoint["state_dict"] = checkpoint[TRAINING_WEIGHTS_KEY]

    def _new_best_heads(self, dataloader: int = 0) -> BestHeads:
        """Each head's best epoch by its own weighted loss on a validation set (as NequIP
        names its metrics)."""
        weights = {name: float(entry.coeff or 0.0) for name, entry in self.loss.entries.items()}
        prefix = f"val{dataloader}_epoch{self.logging_delimiter}"
        return BestHeads(self.probe_model, weights, prefix)

    def _run_directory(self) -> Path | None:
        """Where the first ``ModelCheckpoint`` writes (the run directory), if there is one."""
        checkpoints = self.trainer.checkpoint_callbacks
        return Path(checkpoints[0].dirpath) if checkpoints and checkpoints[0].dirpath else None
