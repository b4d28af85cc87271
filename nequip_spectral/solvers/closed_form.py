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
import textwrap
import time
from pathlib import Path

import torch
from nequip.data import AtomicDataDict

from .._distributed import every_rank, rank_and_world
from ..config import SpectralProbeError
from ..heads import FORCE_FIT, PROBE
from ..report.frames import batch_frame_ids, dataset_frame_ids, frame_origin
from ..theory.ridge import ALPHAS, LeastSquaresData, solve_ridge


def empty_folds(probe_model) -> dict:
    """``{fit: [[LeastSquaresData of each fold] of each slot]}``, nothing added yet (a slot:
    a backbone's tap)."""
    return {
        fit: [
            [
                LeastSquaresData.empty(probe_model.num_features(s), probe_model.num_types,
                                       probe_model.num_heads, with_forces=fit == FORCE_FIT)
                for _ in range(probe_model.probe.ridge_folds)
            ]
            for s in range(len(probe_model.slots))
        ]
        for fit in probe_model.fits
    }  # fmt: skip


def add_least_squares(probe_model, data, systems, folds: torch.Tensor) -> None:
    """Add a batch's rows (the probe's
    :meth:`~nequip_spectral.nn.SpectralProbeModel.least_squares_rows`) to every backbone's
    least-squares data (of each of its taps), each frame's to its fold.

    Args:
        probe_model: the :class:`~nequip_spectral.nn.SpectralProbeModel`
        data: a batch
        systems: ``{fit: [[LeastSquaresData of each fold] of each slot]}``
        folds: ``(frames,)`` each frame's fold; ``-1``: left out
    """
    present = [(fold, folds == fold) for fold in folds.unique().tolist() if fold >= 0]
    for b, rows in enumerate(probe_model.least_squares_rows(data)):
        for fit in probe_model.fits:
            for fold, mine in present:
                systems[fit][b][fold].add_energies(rows.energy_rows[mine], rows.type_counts[mine],
                                                   rows.energy_targets[mine])  # fmt: skip
        if rows.force_rows is None:
            continue
        for fold, mine in present:  # the force rows are (direction, frame)
            systems[FORCE_FIT][b][fold].add_forces(
                rows.force_rows[:, mine].flatten(0, 1), rows.force_targets[:, mine].flatten(0, 1),
                components=int(rows.force_components[mine].sum()),
            )


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
    """``{fit: [[LeastSquaresData of each fold] of each slot]}`` of the frames of
    ``datasets``, in ``ridge_folds`` folds of consecutive frames."""
    num_folds = probe_model.probe.ridge_folds
    systems = empty_folds(probe_model)
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
        slot], "f": ...}``
    """
    loss_weights = {FORCE_FIT: (energy_coeff, forces_coeff)}  # the energy spectrum: energies alone
    # the control head (last) fits the common target; every other head its own target minus
    # the control's (the injected part), with a ridge strength of its own, and the control's
    # solution is added back: each head's ridge shrinks it toward the control head, so that
    # its difference from the control is exactly the ridge fit of the injected signal
    num_heads = probe_model.num_heads
    relative = torch.eye(num_heads, dtype=torch.float64)
    relative[-1, :-1] = -1.0
    add_control = torch.linalg.inv(relative)
    chosen = {}
    for fit in probe_model.fits:
        chosen[fit] = []
        for s, slot in enumerate(probe_model.slots):
            heads = probe_model.probe.heads(slot, fit)
            intercept = torch.tensor([head.intercept for head in heads])
            solution = {}  # weights, intercepts, alpha, at_edge, folds_helped: (..., heads)
            for group in (intercept, ~intercept):  # two designs: with and without intercepts
                if group.any():
                    part = solve_ridge(
                        [fold.with_targets(relative[:, group]) for fold in folds[fit][s]],
                        *loss_weights.get(fit, (1.0, 0.0)),
                        alphas,
                        intercept=bool(intercept[group][0]),
                    )
                    for name in ("weights", "intercepts", "alpha", "at_edge", "folds_helped"):
                        value = torch.as_tensor(getattr(part, name))
                        whole = solution.setdefault(name, value.new_zeros(*value.shape[:-1],
                                                                          num_heads))  # fmt: skip
                        whole[..., group] = value
            weights, intercepts = (solution[key] @ add_control for key in ("weights", "intercepts"))
            probe_model.load_solution(fit, s, weights, intercepts, solution["alpha"])
            chosen[fit].append({name: solution[name].tolist()
                                for name in ("alpha", "at_edge", "folds_helped")})  # fmt: skip
    return chosen


class ClosedFormFit:
    """The closed form of one probe: its fitting frames' least-squares data, added batch by
    batch as they come, then the solve.

    Each frame goes to its fold (:func:`fold_of_frames` over the training and validation
    frames), known by its identity (:func:`~nequip_spectral.report.frames.frame_id`), so
    batches may come in any order and from any loader. With ``saved`` (a file in the run
    directory), a solve that fails never loses the pass: the collected data are written there
    before the error is raised, and a fit of the same probe that finds the file solves from it
    instead of collecting again (and removes it once solved); a file from other probe
    settings or frames is refused.

    Args:
        probe_model: the :class:`~nequip_spectral.nn.SpectralProbeModel`
        train_datasets, val_datasets: the fitting frames
        saved: where a failed solve leaves the collected data
    """

    def __init__(self, probe_model, train_datasets, val_datasets, saved: Path | None = None):
        self.model, self.saved = probe_model, saved
        self.datasets = [*train_datasets, *val_datasets]
        self.frames = [sum(len(d) for d in split) for split in (train_datasets, val_datasets)]
        if sum(self.frames) < 2:
            raise SpectralProbeError(
                "spectral_probe.ridge_folds: the closed form chooses each ridge strength on "
                "folds of the training and validation frames, and needs at least 2 of them"
            )
        self.key = _collection_key(probe_model, train_datasets, val_datasets)
        self.systems, self.loaded = empty_folds(probe_model), False
        self._fold_of = None  # frame_id -> fold, made when first asked
        self._seen = set()  # frames added on any rank
        self.start = time.perf_counter()
        if saved is not None and saved.exists():
            stored = torch.load(saved, weights_only=False)
            if stored["key"] != self.key:
                raise SpectralProbeError(
                    f"{saved} holds the closed form's normal equations of a run with other "
                    "spectral_probe settings or frames; remove it, or run in another directory"
                )
            self.systems, self.loaded = stored["folds"], True
            print(f"closed form: the collected normal equations read from {saved}", flush=True)

    def folds_of(self, ids: list[int]) -> torch.Tensor:
        """``(frames,)`` the fold of each frame of identity ``ids`` (``batch_frame_ids``)."""
        if self._fold_of is None:
            self._fold_of = {
                key: int(fold)
                for dataset, folds in zip(self.datasets, fold_of_frames(self.datasets,
                                          self.model.probe.ridge_folds), strict=True)
                for key, fold in zip(dataset_frame_ids(dataset), folds.tolist(), strict=True)
            }  # fmt: skip
        unknown = [i for i in ids if i not in self._fold_of]
        if unknown:
            raise SpectralProbeError(
                f"the closed form was given {len(unknown)} frame(s) that are not among the "
                "training and validation frames it was set up with"
            )
        return torch.tensor([self._fold_of[i] for i in ids])

    def add(self, data, folds: torch.Tensor | None = None, across_ranks: bool = False) -> None:
        """Add a batch (nothing once read from ``saved``). ``folds``: its frames' folds, else
        :meth:`folds_of`. ``across_ranks`` (every rank calls it at every batch, as in
        Lightning's training loop): a frame that a rank has added already, a distributed
        sampler's padding, is left out (on every rank but the first that had it)."""
        if self.loaded:
            return
        ids = batch_frame_ids(data).tolist()  # (computed once a batch)
        folds = self.folds_of(ids) if folds is None else folds.cpu()
        if across_ranks:
            rank, _ = rank_and_world()
            new = []
            for r, rank_ids in enumerate(every_rank(ids)):
                for i in rank_ids:
                    if r == rank:
                        new.append(i not in self._seen)
                    self._seen.add(i)
            folds = torch.where(torch.tensor(new), folds, -1)
        device = data[AtomicDataDict.POSITIONS_KEY].device
        add_least_squares(self.model, data, self.systems, folds.to(device))

    def solve(self, energy_coeff: float, forces_coeff: float) -> dict:
        """Join every rank's data and :func:`solve_heads`; what was chosen, with timings."""
        if not self.loaded:
            self.systems = {fit: [[fold.all_ranks() for fold in per_fold] for per_fold in per_b]
                            for fit, per_b in self.systems.items()}  # fmt: skip
        collected = time.perf_counter()
        try:
            chosen = solve_heads(self.model, self.systems, energy_coeff, forces_coeff)
        except Exception as error:
            saved = self.saved
            if saved is None or saved.exists() or rank_and_world()[0] != 0:
                raise
            torch.save({"key": self.key, "folds": self.systems}, saved)
            raise RuntimeError(
                f"the closed-form solve failed ({type(error).__name__}: {error}). The collected "
                f"normal equations are saved in {saved}: a rerun of the same command in the "
                "same directory solves from them without collecting again"
            ) from error
        if self.loaded and rank_and_world()[0] == 0:
            self.saved.unlink()
        return {
            "heads": chosen,
            "train_frames": self.frames[0],
            "val_frames": self.frames[1],
            "folds": sum(fold.num_frames > 0 for fold in self.systems[self.model.fits[0]][0]),
            "seconds_collect": collected - self.start,
            "seconds_solve": time.perf_counter() - collected,
        }


class ExactSolve(torch.optim.Optimizer):
    """The closed form as the heads' optimizer, for Lightning: its one step is the exact solve
    (``solve``, called with no arguments) of everything collected before it.

    Args:
        params: the heads' parameters
        solve: what the step does
    """

    def __init__(self, params, solve):
        super().__init__(params, {})
        self._solve = solve

    @torch.no_grad()
    def step(self, closure=None):
        self._solve()


def fit_closed_form(probe_model, train_datasets, val_datasets, energy_coeff, forces_coeff,
                    batch_size: int, device, saved: Path | None = None) -> dict:  # fmt: skip
    """The closed form in one call, outside a training loop: a :class:`ClosedFormFit` given
    every fitting frame in file order (this rank's share of the batches) and solved."""
    fit = ClosedFormFit(probe_model, train_datasets, val_datasets, saved)
    for batch, folds in _batches(fit.datasets, batch_size, device, probe_model.probe.ridge_folds):
        fit.add(batch, folds)
    return fit.solve(energy_coeff, forces_coeff)


def _collection_key(probe_model, train_datasets, val_datasets) -> dict:
    """What the collected data depend on: the probe's settings and the frames' count of each
    split."""
    settings = dataclasses.asdict(probe_model.probe)
    counts = [[len(d) for d in datasets] for datasets in (train_datasets, val_datasets)]
    return {"probe": settings, "frames": counts}


def describe_pass(probe_model, train_frames: int, val_frames: int) -> str:
    """The line printed before the solve: what is about to be solved."""
    sets = " and ".join({"e": "energy", "f": "force"}[fit] for fit in probe_model.fits)
    return (
        f"closed form: solving {probe_model.num_heads} heads per set ({sets} spectrum) of "
        f"{len(probe_model.backbones)} backbone(s), {probe_model.describe_features()}, on "
        f"{train_frames} training and {val_frames} validation frames"
    )


def describe_solution(result: dict, probe_model) -> str:
    """What the closed form collected and chose, as printed when it is solved."""
    lines = [
        f"closed form: {result['train_frames'] + result['val_frames']} frames collected in "
        f"{result['seconds_collect']:.1f} s, solved in {result['seconds_solve']:.1f} s"
    ]
    folds = result["folds"]
    for fit, per_slot in result["heads"].items():
        for slot, chosen in zip(probe_model.slots, per_slot, strict=True):
            heads = probe_model.probe.heads(slot, fit)
            alphas = ", ".join(f"{head.name}={alpha:.0e}" for head, alpha in
                               zip(heads, chosen["alpha"], strict=True))
            edge = " (some at the grid's edge)" if any(chosen["at_edge"]) else ""
            lines.append(textwrap.fill(
                f"  backbone {slot[0]}{_at(probe_model, slot)}, ridge strengths chosen by "
                f"{folds}-fold cross-validation on consecutive frames{edge} (inf: no feature "
                f"weight): {alphas}", 100,
                subsequent_indent="    "))  # fmt: skip
            almost = [  # probed l up to d_r L (not the null heads, not the control)
                head.name
                for head, alpha, helped in zip(heads, chosen["alpha"], chosen["folds_helped"],
                                               strict=True)
                if head.role == PROBE and head.l <= probe_model.ceilings[slot[1] or 0]
                and math.isinf(alpha)
                and helped == folds - 1
            ]  # fmt: skip
            if almost:
                lines.append(f"    at or below the ceiling, no feature weight (reads 0) though it "
                             f"helped on {folds - 1} of {folds} folds: {' '.join(almost)}")
    return "\n".join(lines)


def _at(probe_model, slot) -> str:
    """`` at layer2_convnet``: a slot's tap, where a backbone has several."""
    return "" if slot[1] is None else f" at {probe_model.backbones[slot[0]].taps[slot[1]]}"
