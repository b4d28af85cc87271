"""The closed-form solver: one pass over the training and validation frames, then two solves.

Every head of the probe is linear in its weights (``solver: closed_form``), so fitting it is a
ridge regression (:mod:`nequip_spectral.theory.ridge`). One pass over the training split
collects every backbone's least-squares data (energy rows, a force row per force component or
per sketched direction), one over the validation split the same for choosing each head's ridge
strength; under DDP each rank takes every ``world``-th batch and the data are joined before
solving. The energy spectrum's heads are then solved on energies alone, the force spectrum's
on energies and forces with the loss's weights (each head relative to the control head, see
:func:`solve_heads`), and the solutions are loaded into the heads.
"""

import time

import torch
from nequip.data import AtomicDataDict

from .._keys import ENERGY_FIT, FORCE_FIT
from ..theory.ridge import ALPHAS, LeastSquaresData, solve_ridge


def _batches(datasets, batch_size: int, device):
    """This rank's share of the frames of ``datasets``, in order, as batches on ``device``."""
    rank, world = 0, 1
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    for dataset in datasets:
        starts = range(0, len(dataset), batch_size)
        for number, start in enumerate(starts):
            if number % world == rank:
                frames = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
                yield AtomicDataDict.to_(AtomicDataDict.batched_from_list(frames), device)


def collect(probe_model, datasets, batch_size: int, device) -> dict:
    """``{fit: [LeastSquaresData of each backbone]}`` of the frames of ``datasets``."""
    systems = {
        fit: [
            LeastSquaresData.empty(
                heads.features.num_features, probe_model.shifts[fit].shape[1], heads.num_heads
            )
            for heads in probe_model.heads[fit]
        ]
        for fit in probe_model.fits
    }
    for batch in _batches(datasets, batch_size, device):
        probe_model.add_least_squares(batch, systems)
    return {fit: [data.all_ranks() for data in per_backbone] for fit, per_backbone in
            systems.items()}  # fmt: skip


def solve_heads(probe_model, train, validation, energy_coeff, forces_coeff, alphas=ALPHAS):
    """Solve every head, load it into the model, and return what was chosen.

    Args:
        probe_model: the :class:`~nequip_spectral.nn.SpectralProbeModel`
        train, validation: the splits' data from :func:`collect`
        energy_coeff, forces_coeff: the force spectrum's loss weights
        alphas: the grid of ridge strengths

    Returns:
        ``{"e": [{"alpha": [...], "at_edge": [...]} of each backbone], "f": ...}``
    """
    weights = {ENERGY_FIT: (1.0, 0.0), FORCE_FIT: (energy_coeff, forces_coeff)}
    # the control head (last) fits the common target; every other head its own target minus
    # the control's (the injected part), with a ridge strength of its own, and the control's
    # solution is added back: each head's ridge shrinks it toward the control head, so that
    # its difference from the control is exactly the ridge fit of the injected signal
    num_heads = len(probe_model.targets)
    relative = torch.eye(num_heads, dtype=torch.float64)
    relative[-1, :-1] = -1.0
    chosen = {}
    for fit in probe_model.fits:
        chosen[fit] = []
        for b, heads in enumerate(probe_model.heads[fit]):
            solution = solve_ridge(
                train[fit][b].with_targets(relative),
                validation[fit][b].with_targets(relative),
                *weights[fit],
                alphas,
            )
            add_control = torch.linalg.inv(relative)
            with torch.no_grad():
                heads.weights.copy_(solution.weights @ add_control)
                heads.alpha.copy_(torch.as_tensor(solution.alpha))
                probe_model.shifts[fit][b] = solution.intercepts @ add_control
            chosen[fit].append(
                {"alpha": solution.alpha.tolist(), "at_edge": solution.at_edge.tolist()}
            )
    return chosen


def fit_closed_form(probe_model, train_datasets, val_datasets, energy_coeff, forces_coeff,
                    batch_size: int, device) -> dict:  # fmt: skip
    """:func:`collect` both splits and :func:`solve_heads`; the timings in the result."""
    start = time.perf_counter()
    train = collect(probe_model, train_datasets, batch_size, device)
    validation = collect(probe_model, val_datasets, batch_size, device)
    collected = time.perf_counter()
    chosen = solve_heads(probe_model, train, validation, energy_coeff, forces_coeff)
    return {
        "heads": chosen,
        "train_frames": train[ENERGY_FIT][0].num_frames,
        "val_frames": validation[ENERGY_FIT][0].num_frames,
        "seconds_collect": collected - start,
        "seconds_solve": time.perf_counter() - collected,
    }
