"""``SpectralMetrics``: the Lightning callback that turns the test set into the spectrum."""

from pathlib import Path

import lightning
import torch

from ..config import SpectralProbeConfig
from .report import REPORT_FILES, batch_frame_sums, build_report, format_table, write_report


def gather_frames(tensor: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Concatenate every rank's per-frame sums along ``dim`` (identity without DDP).

    Sums of frames are what the metrics need, so ranks are joined before any ratio is taken.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return tensor
    parts = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(parts, tensor.cpu())
    return torch.cat(parts, dim=dim)


def _frame_name(dataset, index: int) -> str:
    """``frame I of FILE`` through any ``Subset`` of an ``ASEDataset``."""
    while hasattr(dataset, "indices") and hasattr(dataset, "dataset"):
        dataset, index = dataset.dataset, int(dataset.indices[index])
    return f"frame {index} of {getattr(dataset, 'file_path', 'the dataset')}"


def check_frames(datasets) -> None:
    """Apply the transforms to every frame once, naming the frame of any bad input."""
    for dataset in datasets:
        for index in range(len(dataset)):
            try:
                dataset[index]
            except (ValueError, KeyError) as error:
                raise ValueError(f"{_frame_name(dataset, index)}: {error}") from error


class SpectralMetrics(lightning.Callback):
    """Computes the spectrum at the end of test and writes the report.

    Per backbone and probed ``l``: rho, R2_inj and raw gain for forces and energies, the cliff
    ``rho(d_r L) / rho(d_r L + 1)`` and a hierarchical cluster bootstrap of
    ``Delta = G_a - G_b``. Prints the table and writes ``spectral_report.json``, ``.csv`` and
    ``.png`` into ``output_dir``. Before training or testing starts it refuses an
    ``output_dir`` that holds a report or a checkpoint already, and applies the transforms to
    every frame once, so that a bad frame is named by its index in its file.

    .. code-block:: yaml

      trainer:
        callbacks:
          - _target_: nequip_spectral.SpectralMetrics
            probe: ${spectral_probe}
            output_dir: ${hydra:runtime.output_dir}

    Args:
        probe: the ``spectral_probe:`` block
        output_dir: where the report goes
        n_bootstrap: bootstrap replicates
        block_length: test frames per bootstrap block
    """

    def __init__(self, probe, output_dir: str, n_bootstrap: int = 2000, block_length: int = 10):
        super().__init__()
        self.probe = SpectralProbeConfig.from_block(probe)
        self.output_dir = Path(output_dir)
        self.n_bootstrap = n_bootstrap
        self.block_length = block_length
        self.report = None
        self._batches = []
        self._started = False

    def setup(self, trainer, pl_module, stage: str) -> None:
        if not self._started:  # the first stage of this run: train, or test alone
            self._refuse_earlier_run()
            self._started = True
        datamodule = trainer.datamodule
        splits = {"fit": ("train_dataset", "val_dataset"), "test": ("test_dataset",)}
        for split in splits.get(stage, ()):
            check_frames(getattr(datamodule, split, None) or [])

    def _refuse_earlier_run(self) -> None:
        existing = [
            name for name in (*REPORT_FILES, "best.ckpt") if (self.output_dir / name).exists()
        ]
        if existing:
            raise FileExistsError(
                f"{self.output_dir} already holds {existing} from an earlier run; "
                "choose a new output directory instead of overwriting it"
            )

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self._batches = []

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        output = outputs[f"test_{dataloader_idx}_output"]
        with torch.no_grad():
            self._batches.append(
                batch_frame_sums(output, batch, self.probe, len(self.probe.backbones))
            )

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        head = gather_frames(torch.cat([h for h, _ in self._batches], dim=1))
        control = gather_frames(torch.cat([c for _, c in self._batches], dim=1))
        if trainer.global_rank != 0:
            return
        probe_model = pl_module.model["sole_model"].model
        self.report = build_report(
            head.numpy(),
            control.numpy(),
            self.probe,
            L=probe_model.backbones[0].irreps.lmax,
            head_parameters=probe_model.heads[0].parameters_per_head,
            n_bootstrap=self.n_bootstrap,
            block_length=self.block_length,
            seed=self.probe.seed,
            primary="forces" if probe_model.fit_forces else "energy",
        )
        write_report(self.report, self.output_dir)
        print(format_table(self.report), flush=True)
        print(f"spectral report written to {self.output_dir}", flush=True)
