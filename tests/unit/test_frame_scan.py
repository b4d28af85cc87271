"""Every fitting frame is transformed once before training: the report writer's check of the
frames and the closed form's fold map share one scan (``dataset_frame_ids``)."""

import ase.io
import torch
from helpers import TYPE_NAMES, aspirin_frames
from nequip.data import AtomicDataDict

from nequip_spectral.config import SpectralProbeConfig
from nequip_spectral.data import BUNDLED_ASPIRIN
from nequip_spectral.model import freeze_and_tap
from nequip_spectral.nn import SpectralProbeModel
from nequip_spectral.report.frames import batch_frame_ids
from nequip_spectral.solvers.closed_form import ClosedFormFit
from nequip_spectral.train.report_writer import check_frames

PROBE = {"backbones": ["in-process"], "l_values": [1], "target": "injected"}


class CountingDataset(list):
    """Frames that count how often each is read (a transform pass, in a real dataset)."""

    reads = 0
    __hash__ = object.__hash__  # (a dataset is known by its identity, as torch's are)

    def __getitem__(self, index):
        CountingDataset.reads += 1
        return super().__getitem__(index)


def test_the_fold_map_reads_the_frames_the_writer_checked():
    """Mutation tried: ``check_frames`` not keeping the ids (``dataset_frame_ids(dataset,
    ids)`` removed): the fold map reads every frame again, 2 reads a frame."""
    from nequip.model import NequIPGNNModel

    backbone = NequIPGNNModel(
        seed=0, model_dtype="float64", type_names=TYPE_NAMES, r_max=5.0, l_max=1, num_layers=2,
        num_features=2, radial_mlp_depth=1, radial_mlp_width=4, avg_num_neighbors=18.0,
        per_type_energy_shifts={s: 0.0 for s in TYPE_NAMES},
        per_type_energy_scales={s: 1.0 for s in TYPE_NAMES},
    )  # fmt: skip
    model = SpectralProbeModel([freeze_and_tap(backbone)], PROBE, TYPE_NAMES)
    frames = aspirin_frames(ase.io.read(BUNDLED_ASPIRIN, index=":10"), PROBE)
    train, val = CountingDataset(frames[:8]), CountingDataset(frames[8:])
    CountingDataset.reads = 0
    check_frames([train, val], SpectralProbeConfig.from_block(PROBE))
    fit = ClosedFormFit(model, [train], [val])
    batch = AtomicDataDict.batched_from_list(frames[6:10])
    folds = fit.folds_of(batch_frame_ids(batch).tolist())
    assert CountingDataset.reads == 10  # one read a frame, by the check
    # two trajectories (lists, not Subsets of one file), each cut into 5 folds: 8 and 2 frames
    assert torch.equal(folds, torch.tensor([3, 4, 0, 2]))
