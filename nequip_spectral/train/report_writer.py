"""``SpectralReportWriter``: the Lightning callback that turns the test set into the spectrum
and writes the report."""

import dataclasses
import logging
import math
import warnings
from collections import defaultdict
from pathlib import Path

import lightning
import torch
from hydra.utils import instantiate
from nequip.data import AtomicDataDict

from .._distributed import every_rank
from .._nequip import probe_of
from ..config import SpectralProbeConfig
from ..report import REPORT_FILES, batch_frame_sums, build_report, format_table, write_report
from ..report.frames import (
    FRAMES_FILE,
    FrameSums,
    batch_frame_ids,
    dataset_frame_ids,
    frame_id,
    frame_source,
)
from ..report.loggers import log_report

# what Lightning says on every probe run that asks nothing of the user: the run directory
# holds Hydra's files before the checkpoints, the closed form's epoch has fewer batches than
# the logging interval, and advice on loggers
KNOWN_WARNINGS = (
    r"Checkpoint directory .* exists and is not empty",
    r"The number of training batches \(\d+\) is smaller than the logging interval",
    r"Starting from v1\.9\.0, `tensorboardX` has been removed",
)
KNOWN_TIPS = "💡 Tip:"


def quiet_known_messages() -> None:
    """Leave out of a probe run's output the messages of :data:`KNOWN_WARNINGS` and
    Lightning's tips."""
    for message in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    for name in ("lightning.pytorch.utilities.rank_zero", "pytorch_lightning.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoTips) for f in logger.filters):
            logger.addFilter(_NoTips())


class _NoTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(KNOWN_TIPS)


def gather_frames(tensor: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Concatenate every rank's per-frame sums along ``dim`` (identity without DDP).

    Sums of frames are what the metrics need, so ranks are joined before any ratio is taken.
    """
    return torch.cat(every_rank(tensor.cpu()), dim=dim)


def check_frames(datasets, probe: SpectralProbeConfig) -> dict:
    """Apply the transforms to every frame once, naming the frame of any bad input, and check
    that each frame has the labels the probe's targets need.

    Returns:
        ``{frame_id: [(file, index), ...]}``: where each frame comes from
    """
    needed = {}
    if probe.target == "residual":
        needed[AtomicDataDict.TOTAL_ENERGY_KEY] = "every spectrum's residual target needs them"
        if probe.force_spectrum:
            needed[AtomicDataDict.FORCE_KEY] = (
                "the force spectrum needs them; set spectral_probe.force_spectrum: false "
                "(force_spectrum=false with the example configs) for the energy spectrum alone"
            )
    sources = defaultdict(list)
    for dataset in datasets:
        ids = []
        for index in range(len(dataset)):
            source = frame_source(dataset, index)
            name = f"frame {source[1]} of {source[0] or 'the dataset'}"
            try:
                frame = dataset[index]
            except (ValueError, KeyError) as error:
                raise ValueError(f"{name}: {error}") from error
            for key, why in needed.items():
                if key not in frame:
                    raise ValueError(f"{name} has no '{key}': {why}")
            ids.append(frame_id(frame))
            sources[ids[-1]].append(source)
        dataset_frame_ids(dataset, ids)  # (the closed form's fold map reads them)
    return dict(sources)


class SpectralReportWriter(lightning.Callback):
    """Computes the spectrum at the end of test (the heads are fitted by
    :class:`~nequip_spectral.train.lightning.SpectralProbeLightningModule`).

    Per backbone and probed ``l``: rho, R2_inj and raw gain of both spectra, the cliff
    ``rho(d_r L) / rho(d_r L + 1)`` and intervals from a two-level cluster bootstrap
    (backbones, then blocks of frames consecutive in their trajectory); writes the per-frame
    file ``spectral_frames.npz`` (:mod:`~nequip_spectral.report.frames`), prints the table and
    writes ``spectral_report.json``, ``.csv`` and ``.png`` into ``output_dir``.

    Before anything trains, it refuses a fresh run whose ``output_dir`` holds a report or a
    checkpoint already (a run resumed with ``ckpt_path=`` goes on), and applies the
    transforms to every frame of every split once, so that a bad frame is named by its index
    in its file (and each test frame's place in its file is known).

    .. code-block:: yaml

      trainer:
        callbacks:
          - _target_: nequip_spectral.SpectralReportWriter
            probe: ${spectral_probe}
            output_dir: ${hydra:runtime.output_dir}

    Args:
        probe: the ``spectral_probe:`` block
        output_dir: where the report goes
        n_bootstrap: bootstrap replicates
        block_length: test frames per bootstrap block; ``null``: chosen from the data
    """

    def __init__(
        self,
        probe,
        output_dir: str,
        n_bootstrap: int = 2000,
        block_length: int | None = None,
    ):
        super().__init__()
        quiet_known_messages()
        self.probe = SpectralProbeConfig.from_block(probe)
        self.output_dir = Path(output_dir)
        self.n_bootstrap = n_bootstrap
        self.block_length = block_length
        self.report = None
        self._batches = []
        self._sources = {}
        self._started = False

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage == "test" and not self._started:  # a test-only run
            self._refuse_earlier_run()
            self._started = True
        datamodule = trainer.datamodule
        if stage == "fit" and trainer.is_global_zero:
            for datasets in (datamodule.train_dataset, datamodule.val_dataset):
                check_frames(datasets or [], self.probe)
            test = getattr(datamodule, "test_dataset_config", None) or []
            self._sources = check_frames(instantiate(test) or [], self.probe)
        elif stage == "test" and trainer.is_global_zero and not self._sources:  # test-only run
            self._sources = check_frames(datamodule.test_dataset or [], self.probe)

    def on_fit_start(self, trainer, pl_module) -> None:
        # (Lightning knows a resumed run's checkpoint only after the setup hooks)
        if not self._started and trainer.ckpt_path is None:
            self._refuse_earlier_run()
        self._started = True

    def _refuse_earlier_run(self) -> None:
        existing = [
            name for name in (*REPORT_FILES, "best.ckpt") if (self.output_dir / name).exists()
        ]
        if existing:
            raise FileExistsError(
                f"{self.output_dir} already holds {existing} from an earlier run; "
                "choose a new output directory instead of overwriting it, or resume that run "
                "with ++ckpt_path=PATH/last.ckpt"
            )

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self._batches = []

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        output = outputs[f"test_{dataloader_idx}_output"]
        probe_model = probe_of(pl_module)
        with torch.no_grad():
            head, control = batch_frame_sums(
                output, batch, self.probe, probe_model.slots, probe_model.kinds
            )
        atoms = batch[AtomicDataDict.NUM_NODES_KEY].view(-1).cpu()
        self._batches.append((head, control, batch_frame_ids(batch), atoms))

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        heads, controls, ids, atoms = zip(*self._batches, strict=True)
        head = gather_frames(torch.cat(heads, dim=1))
        control = gather_frames(torch.cat(controls, dim=1))
        ids = gather_frames(torch.cat(ids), dim=0)
        atoms = gather_frames(torch.cat(atoms), dim=0).tolist()
        if trainer.global_rank != 0:
            return
        context = report_context(probe_of(pl_module), atoms, self.n_bootstrap, self.block_length)
        frames = FrameSums.from_test(
            head.numpy(), control.numpy(), ids.numpy(), self._sources, context
        )
        self.output_dir.mkdir(parents=True, exist_ok=True)
        frames.save(self.output_dir / FRAMES_FILE)
        self.report = build_report(frames)
        write_report(self.report, self.output_dir)
        log_report(trainer.loggers, self.report, self.output_dir / REPORT_FILES[2],
                   trainer.global_step)  # fmt: skip

    def teardown(self, trainer, pl_module, stage: str) -> None:
        # the table last, after Lightning's table of test metrics
        if stage == "test" and self.report is not None and trainer.is_global_zero:
            print(f"\n{format_table(self.report)}\nspectral report written to "
                  f"{self.output_dir}", flush=True)  # fmt: skip


def report_context(probe_model, atoms: list[int], n_bootstrap: int, block_length) -> dict:
    """What the report needs besides the per-frame sums (``FrameSums.context``), for test
    frames of ``atoms`` atoms."""
    backbone = probe_model.backbones[0]
    taps = [
        {"name": name, "L": irreps.lmax, "solver": _solver_summary(probe_model, atoms, t)}
        for t, (name, irreps) in enumerate(zip(backbone.taps, backbone.tap_irreps, strict=True))
    ]
    return {
        "probe": dataclasses.asdict(probe_model.probe),
        "L": taps[-1]["L"],
        "kinds": probe_model.kinds,
        "head_parameters": probe_model.parameters_per_head,
        "solver": taps[-1]["solver"],
        "taps": taps,
        "n_bootstrap": n_bootstrap,
        "block_length": block_length,
    }


def _solver_summary(probe_model, atoms: list[int], tap: int) -> dict:
    """For the report: tap ``tap``'s closed-form heads' feature count, how their ridge
    strengths were chosen and which, and the force rows a test frame (of ``atoms`` atoms)
    gets."""
    summary = {}
    if probe_model.probe.solver == "closed_form":
        summary["features"] = probe_model.num_features(tap)
        summary["mixed_irreps"] = probe_model.mixed_irreps(tap)
        summary["ridge_folds"] = probe_model.probe.ridge_folds
        for fit in probe_model.fits:  # null: infinite (the head has no feature weight)
            per_slot = probe_model.ridge_strengths(fit)[tap :: probe_model.num_taps]
            summary[f"alpha_{fit}"] = [[a if math.isfinite(a) else None for a in alphas]
                                       for alphas in per_slot]  # fmt: skip
    if summary and probe_model.with_forces:
        rows = [probe_model.probe.force_rows(n) for n in atoms]
        summary["force_rows"] = {
            "setting": probe_model.probe.force_directions,
            "atoms": [min(atoms), max(atoms)],
            "per_frame": [min(rows), max(rows)],
            "all_components": all(r == 3 * n for r, n in zip(rows, atoms, strict=True)),
        }
    return summary


SpectralMetrics = SpectralReportWriter  # its name in earlier versions' configs
