"""``SpectralProbeLightningModule``: NequIP's training module, fitting the heads as each solver
fits them."""

from pathlib import Path

from nequip.train import NequIPLightningModule

from .._nequip import probe_of
from ..config import SpectralProbeError
from ..solvers.closed_form import describe_solution, fit_closed_form
from ..solvers.sgd import BestHeads
from .metrics import force_fit_weights

BEST_HEADS_KEY = "spectral_best_heads"  # the sgd heads' best epochs, in the checkpoint
NORMAL_EQUATIONS_FILE = "closed_form_normal_equations.pt"  # kept when a solve fails


class SpectralProbeLightningModule(NequIPLightningModule):
    """The probe's training module: it owns fitting the SPN heads.

    ``solver: closed_form``: when training starts, one pass over the training and validation
    frames and the exact ridge solve (:mod:`~nequip_spectral.solvers.closed_form`); no
    optimizer, no gradient epoch. A failed solve leaves the collected normal equations in the
    run directory (``closed_form_normal_equations.pt``), and a rerun there solves from them.
    The solved probe is written as the best and last checkpoint of every ``ModelCheckpoint``.
    ``solver: sgd``: NequIP's gradient descent (the config gives the optimizer), and each head
    kept at its own best validation epoch (:class:`~nequip_spectral.solvers.sgd.BestHeads`,
    stored in the checkpoint so that a resumed run keeps choosing among all epochs), written
    as the best checkpoint at the end.

    .. code-block:: yaml

      training_module:
        _target_: nequip_spectral.SpectralProbeLightningModule
        loss: ...

    Args:
        pass_batch_size: frames per batch of the closed-form pass
        **kwargs: as for :class:`nequip.train.NequIPLightningModule`
    """

    def __init__(self, *args, pass_batch_size: int = 10, **kwargs):
        super().__init__(*args, **kwargs)
        if self.probe_model.probe.solver == "sgd" and self.optimizer_config is None:
            raise SpectralProbeError(
                "spectral_probe.solver: sgd trains the heads by gradient descent and needs "
                "training_module.optimizer (with the example configs: solver=sgd)"
            )
        self.pass_batch_size = pass_batch_size
        self.closed_form = None  # what the closed-form solve chose, once solved
        self.best_heads = None

    @property
    def probe_model(self):
        return probe_of(self)

    def configure_optimizers(self):
        if self.probe_model.probe.solver == "closed_form":
            return None  # solved, not stepped
        return super().configure_optimizers()

    def on_train_start(self) -> None:
        if self.probe_model.probe.solver == "sgd":
            if self.best_heads is None:
                self.best_heads = BestHeads(self.probe_model, self.loss)
            return
        datamodule, run_directory = self.trainer.datamodule, self._run_directory()
        self.closed_form = fit_closed_form(
            self.probe_model,
            datamodule.train_dataset,
            datamodule.val_dataset,
            *force_fit_weights(self.loss),
            batch_size=self.pass_batch_size,
            device=self.device,
            saved=run_directory / NORMAL_EQUATIONS_FILE if run_directory else None,
        )
        if self.trainer.is_global_zero:
            print(describe_solution(self.closed_form, self.probe_model), flush=True)
        self._write_checkpoints()  # what validation would have written
        self.trainer.should_stop = True  # the heads are at their optimum: no gradient epochs

    def on_validation_epoch_end(self) -> None:
        # before NequIP resets the metrics, and before ModelCheckpoint saves: a checkpoint
        # holds every epoch's choice so far
        if self.best_heads is not None and not self.trainer.sanity_checking:
            prefix = f"val0_epoch{self.logging_delimiter}"
            self.best_heads.update(self.val_metrics[0].compute(prefix=prefix))
        super().on_validation_epoch_end()

    def on_train_end(self) -> None:
        if self.best_heads is not None and self.best_heads.best:
            self.best_heads.restore()  # each head at its own best epoch, for the test
            self._write_checkpoints(last=False)

    def on_save_checkpoint(self, checkpoint) -> None:
        if self.best_heads is not None:
            checkpoint[BEST_HEADS_KEY] = self.best_heads.state_dict()

    def on_load_checkpoint(self, checkpoint) -> None:
        if BEST_HEADS_KEY in checkpoint:
            self.best_heads = BestHeads(self.probe_model, self.loss)
            self.best_heads.load_state_dict(checkpoint[BEST_HEADS_KEY])

    def _run_directory(self) -> Path | None:
        """Where the first ``ModelCheckpoint`` writes (the run directory), if there is one."""
        checkpoints = self.trainer.checkpoint_callbacks
        return Path(checkpoints[0].dirpath) if checkpoints and checkpoints[0].dirpath else None

    def _write_checkpoints(self, last: bool = True) -> None:
        """The probe as the best (and last) checkpoint of every ``ModelCheckpoint``."""
        for checkpoint in self.trainer.checkpoint_callbacks:
            best = Path(checkpoint.dirpath) / f"{checkpoint.filename or 'best'}.ckpt"
            self.trainer.save_checkpoint(best)
            checkpoint.best_model_path = str(best)
            if last and checkpoint.save_last:
                path = Path(checkpoint.dirpath) / "last.ckpt"
                self.trainer.save_checkpoint(path)
                checkpoint.last_model_path = str(path)
