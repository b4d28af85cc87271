"""The closed-form solver: one pass over the fitting frames, then a ridge solve.

Every head of the probe is linear in its weights (``solver: closed_form``), so fitting it is a
ridge regression (:mod:`nequip_spectral.theory.ridge`). One pass over the training and
validation splits collects every backbone's least-squares data (energy rows, a force row per
force component or per sketched direction), kept apart by fold: ``ridge_folds`` blocks of
frames consecutive in their trajectory (MD frames are correlated: a frame's neighbours in time
are near-copies of it, so a random split would choose on frames its fit has all but seen).
Under DDP each rank takes every ``world``-th batch and the data are joined before solving.
Each head is then fitted on all folds, its ridge strength chosen by cross-validation over them
(:func:`~nequip_spectral.theory.ridge.solve_ridge`): the energy spectrum's heads on energies
alone, the force spectrum's on energies and forces with the loss's weights, each relative to
the control head (:func:`solve_heads`); the solutions are loaded into the heads.
"""

import dataclasses
import math
import time
from pathlib import Path

import torch
from nequip.data import AtomicDataDict

from .._distributed import rank_and_world
from .._keys import ENERGY_FIT, FORCE_FIT, Null, head_name
from ..config import SpectralProbeError
from ..data.injection import frame_digest
from ..nn.probe import backbone_predictions, feature_derivatives
from ..report.frames import frame_origin
from ..targets import head_target
from ..theory.ridge import ALPHAS, LeastSquaresData, sketch_directions, solve_ridge


def add_least_squares(probe_model, data, systems, folds: torch.Tensor) -> None:
    """Add a batch's rows to every backbone's least-squares data, each frame's to its fold.

    Energy rows: the features summed over the readout atoms, per atom. With the force
    spectrum, force rows: the heads' forces along directions ``v``, minus the derivative of
    the features along ``v``, one Jacobian-vector product through the backbone each; every
    force component, or a sketch of random directions (``force_directions``,
    :func:`force_sketch`). Targets are formed in float64.

    Args:
        probe_model: the :class:`~nequip_spectral.nn.SpectralProbeModel`
        data: a batch
        systems: ``{fit: [[LeastSquaresData of each fold] of each backbone]}``
        folds: ``(frames,)`` each frame's fold
    """
    batch = probe_model.read(data, torch.float64)
    num_atoms = batch.data[AtomicDataDict.NUM_NODES_KEY].view(-1, 1).to(torch.float64)
    counts = batch.readout.new_zeros(batch.num_frames, probe_model.shifts[ENERGY_FIT].shape[1])
    counts.index_put_((batch.frames, batch.types), batch.readout.squeeze(-1), accumulate=True)

    def frame_features(b, features):  # (..., frames, K)
        heads = probe_model.heads[ENERGY_FIT][b]
        return batch.frame_sum(heads.features(features.to(torch.float64), batch.harmonics)
                               * batch.readout)  # fmt: skip

    tangents = force_sketch(batch, probe_model.probe) if probe_model.with_forces else []
    present = [(fold, folds == fold) for fold in folds.unique().tolist()]  # (fold, its frames)
    for b, (features, energy, forces) in enumerate(probe_model.backbone_outputs(batch.data)):
        outputs = backbone_predictions(b, energy, forces)

        def targets(kind, b=b, outputs=outputs):  # (values, [3,] heads)
            return torch.stack(
                [head_target(outputs, batch.data, b, l, kind, probe_model.probe.target)
                 .to(torch.float64) for l in probe_model.targets], dim=-1)  # fmt: skip

        with torch.no_grad():
            rows = frame_features(b, features.detach()) / num_atoms
            energy_targets = targets("energy")[:, 0] / num_atoms
        for fit in probe_model.fits:
            for fold, mine in present:
                systems[fit][b][fold].add_energies(rows[mine], counts[mine] / num_atoms[mine],
                                                   energy_targets[mine])  # fmt: skip
        if not probe_model.with_forces:
            continue
        # the features' derivatives along every direction, then the feature map's
        derivatives = feature_derivatives(features, batch.pos, tangents).to(torch.float64)
        with torch.no_grad():
            x = features.detach().to(torch.float64)

            def derivative(d, b=b, x=x):  # of the per-frame features along d
                return torch.func.jvp(lambda z: frame_features(b, z), (x,), (d,))[1]

            along_features = torch.cat(  # directions in chunks: (S, atoms, K) is large
                [torch.func.vmap(derivative)(chunk) for chunk in derivatives.split(16)]
            )
            along = batch.frame_sum(torch.einsum("snc,nch->snh", tangents.to(torch.float64),
                                                 targets("forces")))  # fmt: skip
        rows, along = -along_features.flatten(0, 1), along.flatten(0, 1)  # (S x frames, ...)
        for fold, mine in present:
            on_rows = mine.repeat(len(tangents))  # the rows are (direction, frame)
            systems[FORCE_FIT][b][fold].add_forces(rows[on_rows], along[on_rows],
                                                   components=int(3 * num_atoms[mine].sum()))


def force_sketch(batch, probe) -> torch.Tensor:
    """``(directions, atoms, 3)``: each frame's force directions (:func:`sketch_directions`,
    from the frame's own digest), zero past its own."""
    pos = batch.pos
    sizes = batch.data[AtomicDataDict.NUM_NODES_KEY].view(-1).tolist()
    sketches = [
        sketch_directions(len(p), probe.force_rows(len(p)), frame_digest(p, t, probe.seed))
        for p, t in zip(pos.split(sizes), batch.types.split(sizes), strict=True)
    ]
    tangents = torch.zeros(max(len(v) for v in sketches), *pos.shape, dtype=torch.float64)
    start = 0
    for directions in sketches:
        tangents[: len(directions), start : start + directions.shape[1]] = directions
        start += directions.shape[1]
    return tangents.to(device=pos.device, dtype=pos.dtype)


def fold_of_frames(datasets, num_folds: int) -> list[torch.Tensor]:
    """Each frame's fold, per dataset. The frames of all ``datasets`` are grouped by the
    trajectory they come from (the dataset under the ``Subset`` s, e.g. one file), put in
    its order, and each trajectory is cut into ``num_folds`` blocks of consecutive frames:
    fold ``k`` holds the ``k``-th stretch of every trajectory."""
    trajectories = {}  # the dataset under the Subsets -> [(index in it, d, i)]
    for d, dataset in enumerate(datasets):
        for i in range(len(dataset)):
            base, index = frame_origin(dataset, i)
            trajectories.setdefault(id(base), []).append((index, d, i))
    folds = [torch.zeros(len(dataset), dtype=torch.int64) for dataset in datasets]
    for frames in trajectories.values():
        for position, (_, d, i) in enumerate(sorted(frames)):
            folds[d][i] = position * num_folds // len(frames)
    return folds


def _batches(datasets, batch_size: int, device, num_folds: int):
    """This rank's share of the frames of ``datasets``, in order, as batches on ``device``,
    each with its frames' folds (:func:`fold_of_frames`)."""
    rank, world = rank_and_world()
    for dataset, folds in zip(datasets, fold_of_frames(datasets, num_folds), strict=True):
        starts = range(0, len(dataset), batch_size)
        for number, start in enumerate(starts):
            if number % world == rank:
                indices = range(start, min(start + batch_size, len(dataset)))
                frames = [dataset[i] for i in indices]
                batch = AtomicDataDict.to_(AtomicDataDict.batched_from_list(frames), device)
                yield batch, folds[indices.start : indices.stop].to(device)


def collect(probe_model, datasets, batch_size: int, device) -> dict:
    """``{fit: [[LeastSquaresData of each fold] of each backbone]}`` of the frames of
    ``datasets``, in ``ridge_folds`` folds of consecutive frames."""
    num_folds = probe_model.probe.ridge_folds
    systems = {
        fit: [
            [
                LeastSquaresData.empty(
                    heads.features.num_features, probe_model.shifts[fit].shape[1],
                    heads.num_heads, with_forces=fit == FORCE_FIT,
                )
                for _ in range(num_folds)
            ]
            for heads in probe_model.heads[fit]
        ]
        for fit in probe_model.fits
    }
    for batch, folds in _batches(datasets, batch_size, device, num_folds):
        add_least_squares(probe_model, batch, systems, folds)
    return {fit: [[fold.all_ranks() for fold in per_fold] for per_fold in per_backbone]
            for fit, per_backbone in systems.items()}  # fmt: skip


def solve_heads(probe_model, folds, energy_coeff, forces_coeff, alphas=ALPHAS):
    """Solve every head, load it into the model, and return what was chosen.

    Args:
        probe_model: the :class:`~nequip_spectral.nn.SpectralProbeModel`
        folds: the fitting frames' data from :func:`collect`, by fold
        energy_coeff, forces_coeff: the force spectrum's loss weights
        alphas: the grid of ridge strengths

    Returns:
        ``{"e": [{"alpha": [...], "at_edge": [...], "folds_helped": [...]} of each
        backbone], "f": ...}``
    """
    weights = {ENERGY_FIT: (1.0, 0.0), FORCE_FIT: (energy_coeff, forces_coeff)}
    # the control head (last) fits the common target; every other head its own target minus
    # the control's (the injected part), with a ridge strength of its own, and the control's
    # solution is added back: each head's ridge shrinks it toward the control head, so that
    # its difference from the control is exactly the ridge fit of the injected signal
    num_heads = len(probe_model.targets)
    relative = torch.eye(num_heads, dtype=torch.float64)
    relative[-1, :-1] = -1.0
    # per-type intercepts for the control head and l = 0 only: the injected part of an l > 0
    # head averages to zero over directions (as P_l does), so an intercept would fit noise
    intercept = torch.tensor([l is None or (not isinstance(l, Null) and l == 0)
                              for l in probe_model.targets])  # fmt: skip
    add_control = torch.linalg.inv(relative)
    chosen = {}
    for fit in probe_model.fits:
        chosen[fit] = []
        for b, heads in enumerate(probe_model.heads[fit]):
            solution = {}  # weights, intercepts, alpha, at_edge, folds_helped: (..., heads)
            for group in (intercept, ~intercept):  # two designs: with and without intercepts
                if group.any():
                    part = solve_ridge(
                        [fold.with_targets(relative[:, group]) for fold in folds[fit][b]],
                        *weights[fit],
                        alphas,
                        intercept=bool(intercept[group][0]),
                    )
                    for name in ("weights", "intercepts", "alpha", "at_edge", "folds_helped"):
                        value = torch.as_tensor(getattr(part, name))
                        whole = solution.setdefault(name, value.new_zeros(*value.shape[:-1],
                                                                          num_heads))  # fmt: skip
                        whole[..., group] = value
            with torch.no_grad():
                heads.weights.copy_(solution["weights"] @ add_control)
                heads.alpha.copy_(solution["alpha"])
                probe_model.shifts[fit][b] = solution["intercepts"] @ add_control
            chosen[fit].append({name: solution[name].tolist()
                                for name in ("alpha", "at_edge", "folds_helped")})  # fmt: skip
    return chosen


def fit_closed_form(probe_model, train_datasets, val_datasets, energy_coeff, forces_coeff,
                    batch_size: int, device, saved: Path | None = None) -> dict:  # fmt: skip
    """:func:`collect` the training and validation frames and :func:`solve_heads`; the
    timings in the result.

    With ``saved`` (a file in the run directory), a solve that fails never loses the pass:
    the collected data are written there before the error is raised, and a rerun of the same
    probe that finds the file solves from it instead of collecting again (and removes it
    once solved). A file from other probe settings or frames is refused.
    """
    start = time.perf_counter()
    datasets = [*train_datasets, *val_datasets]
    if sum(len(d) for d in datasets) < 2:
        raise SpectralProbeError(
            "spectral_probe.ridge_folds: the closed form chooses each ridge strength on folds "
            "of the training and validation frames, and needs at least 2 of them"
        )
    key = _collection_key(probe_model, train_datasets, val_datasets)
    if saved is not None and saved.exists():
        stored = torch.load(saved, weights_only=False)
        if stored["key"] != key:
            raise SpectralProbeError(
                f"{saved} holds the closed form's normal equations of a run with other "
                "spectral_probe settings or frames; remove it, or run in another directory"
            )
        folds = stored["folds"]
        print(f"closed form: the collected normal equations read from {saved}", flush=True)
    else:
        folds = collect(probe_model, datasets, batch_size, device)
    collected = time.perf_counter()
    try:
        chosen = solve_heads(probe_model, folds, energy_coeff, forces_coeff)
    except Exception as error:
        if saved is None or saved.exists() or rank_and_world()[0] != 0:
            raise
        torch.save({"key": key, "folds": folds}, saved)
        raise RuntimeError(
            f"the closed-form solve failed ({type(error).__name__}: {error}). The collected "
            f"normal equations are saved in {saved}: a rerun of the same command in the same "
            "directory solves from them without collecting again"
        ) from error
    if saved is not None and saved.exists() and rank_and_world()[0] == 0:
        saved.unlink()
    return {
        "heads": chosen,
        "train_frames": sum(len(d) for d in train_datasets),
        "val_frames": sum(len(d) for d in val_datasets),
        "folds": sum(fold.num_frames > 0 for fold in folds[ENERGY_FIT][0]),  # not empty
        "seconds_collect": collected - start,
        "seconds_solve": time.perf_counter() - collected,
    }


def _collection_key(probe_model, train_datasets, val_datasets) -> dict:
    """What the collected data depend on: the probe's settings and the frames' count of each
    split."""
    settings = dataclasses.asdict(probe_model.probe)
    counts = [[len(d) for d in datasets] for datasets in (train_datasets, val_datasets)]
    return {"probe": settings, "frames": counts}


def describe_solution(result: dict, probe_model) -> str:
    """What the closed form collected and chose, as printed when it is solved."""
    heads = probe_model.heads[ENERGY_FIT][0]
    lines = [
        f"closed form: {heads.features.num_features} features per head "
        f"({heads.features.irreps_mix}), {result['train_frames']} training and "
        f"{result['val_frames']} validation frames collected in {result['seconds_collect']:.1f}"
        f" s, solved in {result['seconds_solve']:.1f} s"
    ]
    folds = result["folds"]
    ceiling = probe_model.probe.degree * probe_model.backbones[0].irreps.lmax
    for fit, per_backbone in result["heads"].items():
        for b, chosen in enumerate(per_backbone):
            alphas = " ".join(f"{a:.0e}" for a in chosen["alpha"])
            edge = " (some at the grid's edge)" if any(chosen["at_edge"]) else ""
            lines.append(f"  backbone {b}, {fit} heads: ridge strengths {alphas}{edge}, chosen "
                         f"by {folds}-fold cross-validation on consecutive frames")  # fmt: skip
            almost = [  # probed l up to d_r L (not the null heads, not the control)
                head_name(l, fit)
                for l, alpha, helped in zip(probe_model.targets, chosen["alpha"],
                                            chosen["folds_helped"], strict=True)
                if type(l) is int and l <= ceiling and math.isinf(alpha) and helped == folds - 1
            ]  # fmt: skip
            if almost:
                lines.append(f"    at or below the ceiling, no feature weight (reads 0) though it "
                             f"helped on {folds - 1} of {folds} folds: {' '.join(almost)}")
    return "\n".join(lines)
