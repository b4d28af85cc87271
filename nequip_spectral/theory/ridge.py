r"""Ridge regression of linear heads on per-frame energies and force components, in closed form.

Every SPN head of the closed-form solver is :math:`E_h = \sum_k w_{kh} \Phi_k + \sum_s c_{sh}
N_s`, linear in its weights: :math:`\Phi_k` are the polynomial features summed over the readout
atoms and :math:`N_s` the readout atoms of type :math:`s` (an unpenalized per-type intercept).
The weighted loss of the probe,

.. math::

    \mathcal{L}_h(w, c) = \frac{c_E}{n_E} \sum_{\text{frames}} \left(\frac{E_h - t^E_h}{N}
    \right)^2 + \frac{c_F}{n_F} \sum_{\text{force components}} (F_h - t^F_h)^2
    + \alpha \lVert D w \rVert^2,

is a ridge regression. Its data are kept as :class:`LeastSquaresData`: the energy rows
themselves (one per frame, :math:`K` numbers) and the force rows' normal equations
:math:`\sum g g^\top`, :math:`\sum g\, t^F` (a force row per force component, or per random
direction of a sketch, see :func:`sketch_directions`), one set a fold of consecutive frames.
:func:`ridge_path` partials out the intercept, scales the features to a unit diagonal
(:math:`D`; a feature at round-off level, below ``DROPPED_BELOW`` of the largest diagonal, is
left out), and solves for every :math:`\alpha` of a grid at once from one eigendecomposition
(of the :math:`K \times K` normal matrix, or of the frames' Gram matrix when there are fewer
energy rows than features and no force rows); :func:`solve_ridge` chooses each head's
:math:`\alpha` by cross-validation over the folds.
"""

import dataclasses
import hashlib

import numpy as np
import scipy.linalg
import torch

from .._distributed import every_rank

# relative to the mean eigenvalue (1 after scaling); the last, infinite, strength is the head
# with no feature weight (its intercepts alone): a head whose target no feature predicts
# takes it, instead of the largest finite strength's small fit to noise
ALPHAS = np.append(10.0 ** np.arange(-9.0, 3.01, 0.5), np.inf)
DROPPED_BELOW = 1e-13  # a feature whose diagonal is below this fraction of the largest: left out


@dataclasses.dataclass
class LeastSquaresData:
    """What one fold of frames contributes to the loss of ``num_heads`` linear heads (float64).

    Attributes:
        energy_rows: ``(frames, K)`` per-atom features :math:`\\Phi / N`
        energy_types: ``(frames, types)`` readout atoms per type over :math:`N`
        energy_targets: ``(frames, heads)`` per-atom energy targets :math:`t^E / N`
        force_gram: ``(K, K)`` :math:`\\sum g g^\\top` over the force rows
        force_moment: ``(K, heads)`` :math:`\\sum g\\, t^F`
        force_targets: ``(heads, heads)`` :math:`\\sum t^F t^{F\\top}`
        force_components: number of force components the force rows stand for
    """

    energy_rows: torch.Tensor
    energy_types: torch.Tensor
    energy_targets: torch.Tensor
    force_gram: torch.Tensor
    force_moment: torch.Tensor
    force_targets: torch.Tensor
    force_components: torch.Tensor

    @classmethod
    def empty(cls, num_features: int, num_types: int, num_heads: int,
              with_forces: bool = True) -> "LeastSquaresData":  # fmt: skip
        """No rows yet; ``with_forces=False``: energy rows only (no ``K x K`` force sums)."""
        zeros = torch.zeros
        force_features = num_features if with_forces else 0
        return cls(
            zeros(0, num_features, dtype=torch.float64),
            zeros(0, num_types, dtype=torch.float64),
            zeros(0, num_heads, dtype=torch.float64),
            zeros(force_features, force_features, dtype=torch.float64),
            zeros(force_features, num_heads, dtype=torch.float64),
            zeros(num_heads, num_heads, dtype=torch.float64),
            zeros((), dtype=torch.float64),
        )

    def add_energies(self, rows, types, targets) -> None:
        self.energy_rows = torch.cat([self.energy_rows, rows.double().cpu()])
        self.energy_types = torch.cat([self.energy_types, types.double().cpu()])
        self.energy_targets = torch.cat([self.energy_targets, targets.double().cpu()])

    def add_forces(self, rows, targets, components: int) -> None:
        """Force rows ``(m, K)`` with targets ``(m, heads)``, standing for ``components``."""
        rows, targets = rows.double(), targets.double()
        self.force_gram += (rows.T @ rows).cpu()
        self.force_moment += (rows.T @ targets).cpu()
        self.force_targets += (targets.T @ targets).cpu()
        self.force_components += components

    @classmethod
    def joined(cls, parts: list["LeastSquaresData"]) -> "LeastSquaresData":
        """The data of ``parts`` together: energy rows joined, force sums added."""
        if len(parts) == 1:
            return parts[0]
        return cls(
            *[
                torch.cat([getattr(p, f.name) for p in parts])
                if f.name.startswith("energy")
                else sum(getattr(p, f.name) for p in parts)
                for f in dataclasses.fields(cls)
            ]
        )

    def all_ranks(self) -> "LeastSquaresData":
        """Every rank's data together (itself without DDP)."""
        return self.joined(every_rank(self))

    @property
    def num_frames(self) -> int:
        return self.energy_rows.shape[0]

    def with_targets(self, mix: torch.Tensor) -> "LeastSquaresData":
        """The same rows with targets ``t @ mix`` (``(heads, new heads)``), exactly."""
        return dataclasses.replace(
            self,
            energy_targets=self.energy_targets @ mix,
            force_moment=self.force_moment @ mix,
            force_targets=mix.T @ self.force_targets @ mix,
        )


def sketch_directions(num_atoms: int, count: int, key: bytes) -> torch.Tensor:
    r"""``(min(count, 3N), N, 3)`` random orthonormal directions scaled by :math:`\sqrt{3N/S}`.

    :math:`\sum_s (v_s \cdot F)^2` is then an unbiased estimate of :math:`\lVert F \rVert^2` for
    every :math:`F`, and exact (any orthonormal basis) when ``count >= 3N``. The directions
    are drawn from a seed hashed from ``key`` (a frame's content and the probe seed), so they
    do not depend on the order, batch or rank a frame comes in.
    """
    dim = 3 * num_atoms
    if count >= dim:
        return torch.eye(dim, dtype=torch.float64).view(dim, num_atoms, 3)
    seed = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1
    generator = torch.Generator().manual_seed(seed)
    gaussian = torch.randn(dim, count, generator=generator, dtype=torch.float64)
    basis = torch.linalg.qr(gaussian)[0]  # (3N, S), orthonormal columns
    return (basis.T * (dim / count) ** 0.5).view(count, num_atoms, 3)


@dataclasses.dataclass
class RidgeSolution:
    """The solved heads and how their ridge strengths were chosen.

    Attributes:
        weights: ``(K, heads)`` feature weights :math:`w`
        intercepts: ``(types, heads)`` per-type energies :math:`c`
        alpha: ``(heads,)`` the chosen ridge strengths
        at_edge: ``(heads,)`` whether a chosen strength is the grid's first or last finite
            one (an infinite last strength is a real choice: no feature weight)
        fold_loss: ``(folds, alphas, heads)`` the loss on each held-out (non-empty) fold of
            the heads fitted on the others, which chose the strengths
        folds_helped: ``(heads,)`` on how many folds the strength of lowest pooled held-out
            loss beat the grid's last one (the infinite one by default; 0 when the lowest is
            the last itself); a head keeps feature weight only when on all
    """

    weights: torch.Tensor
    intercepts: torch.Tensor
    alpha: np.ndarray
    at_edge: np.ndarray
    fold_loss: np.ndarray
    folds_helped: np.ndarray


def _loss(data, weights, intercepts, energy_coeff, forces_coeff) -> torch.Tensor:
    """``(heads,)`` the probe's loss (without the penalty) of linear heads on ``data``."""
    loss = torch.zeros(weights.shape[-1], dtype=torch.float64)
    if energy_coeff and data.num_frames:
        error = data.energy_rows @ weights + data.energy_types @ intercepts - data.energy_targets
        loss += energy_coeff * error.square().mean(0)
    if forces_coeff and data.force_components:
        quadratic = (weights * (data.force_gram @ weights)).sum(0)
        linear = (weights * data.force_moment).sum(0)
        squares = data.force_targets.diagonal()
        loss += forces_coeff * (quadratic - 2 * linear + squares) / data.force_components
    return loss


def _symmetric_eigh(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.linalg.eigh``, or LAPACK's through SciPy where that fails to converge."""
    try:
        return torch.linalg.eigh(matrix)
    except torch.linalg.LinAlgError:  # MKL's can, on the degenerate modes of symmetric crystals
        values, vectors = scipy.linalg.eigh(matrix.numpy())
        return torch.from_numpy(values), torch.from_numpy(vectors)


def ridge_path(data: LeastSquaresData, energy_coeff: float, forces_coeff: float,
               intercept: bool = True):  # fmt: skip
    """``alpha -> (weights, intercepts)``: the ridge solution of every head on ``data`` for
    any strength, from one eigendecomposition (module doc)."""
    use_forces = bool(forces_coeff) and float(data.force_components) > 0
    if not energy_coeff and not use_forces:
        raise ValueError("ridge_path: nothing to fit (no energy weight and no force rows)")
    # the intercept fits energies only; partial it out of the energy rows (Frisch-Waugh)
    types = data.energy_types if intercept else data.energy_types[:, :0]
    projector = torch.linalg.pinv(types)  # targets -> least-squares intercepts
    rows = data.energy_rows - types @ (projector @ data.energy_rows)
    targets = data.energy_targets - types @ (projector @ data.energy_targets)
    energy_weight = energy_coeff / max(data.num_frames, 1)
    force_weight = forces_coeff / float(data.force_components) if use_forces else 0.0
    diagonal = energy_weight * rows.square().sum(0)
    if use_forces:
        diagonal = diagonal + force_weight * data.force_gram.diagonal()
    # a feature at round-off level (one that symmetry makes zero, say) is left out: scaled to
    # a unit diagonal it would be pure noise with the weight of a real feature
    kept = diagonal > DROPPED_BELOW * diagonal.max()
    inverse_scale = diagonal[kept].rsqrt()
    moment = energy_weight * rows.T @ targets
    if use_forces:
        moment = moment + force_weight * data.force_moment
    moment = moment[kept] * inverse_scale[:, None]

    scaled = rows[:, kept] * (energy_weight**0.5 * inverse_scale)  # the unit-diagonal problem
    if not use_forces and scaled.shape[0] < scaled.shape[1]:  # fewer frames than features
        eigenvalues, eigenvectors = _symmetric_eigh(scaled @ scaled.T)
        keep = eigenvalues > eigenvalues.max() * 1e-14
        eigenvalues = eigenvalues[keep]
        basis = scaled.T @ eigenvectors[:, keep] / eigenvalues.sqrt()  # the same eigenvectors
    else:
        gram = scaled.T @ scaled
        if use_forces:
            gram = gram + force_weight * data.force_gram[kept][:, kept] * torch.outer(
                inverse_scale, inverse_scale
            )
        eigenvalues, basis = _symmetric_eigh(gram)
    projected = basis.T @ moment  # (modes, heads)

    def solution(alpha):
        modes = projected / (eigenvalues.clamp(min=0) + alpha)[:, None]
        weights = moment.new_zeros(len(kept), moment.shape[1])  # a left-out feature: no weight
        weights[kept] = basis @ modes * inverse_scale[:, None]
        intercepts = torch.zeros(data.energy_types.shape[1], weights.shape[1]).to(weights)
        if intercept:
            intercepts = projector @ (data.energy_targets - data.energy_rows @ weights)
        return weights, intercepts

    return solution


def solve_ridge(
    folds: list[LeastSquaresData],
    energy_coeff: float = 1.0,
    forces_coeff: float = 1.0,
    alphas: np.ndarray = ALPHAS,
    intercept: bool = True,
) -> RidgeSolution:
    """The ridge solution of every head on all ``folds``, each head's strength chosen by
    cross-validation over the folds (blocks of frames consecutive in their trajectory).

    Each fold is held out in turn and the heads fitted on the others are scored on it; a head
    takes the strength of lowest loss over all held-out folds, and keeps it only if it beats
    the infinite strength (no feature weight) on *every* fold: a head whose target no feature
    predicts (above the ceiling, a null head) then reads exactly 0 instead of the noise that
    happened to fit the trajectory best on average.

    Args:
        folds: the fitting data, one part a fold (at least two with frames)
        energy_coeff, forces_coeff: the loss weights of energies and forces; a zero drops the
            kind (``forces_coeff = 0``: the energy spectrum's question)
        alphas: the grid of ridge strengths (relative: the scaled normal matrix has a unit
            diagonal); when the last is infinite, the reference of the every-fold rule
        intercept: fit the per-type intercepts (else they are zero)
    """
    folds = [fold for fold in folds if fold.num_frames]
    if len(folds) < 2:
        raise ValueError("solve_ridge: cross-validation needs at least two folds with frames")
    fold_loss = []  # (folds, alphas, heads): each fold's loss of the heads fitted without it
    for k, held in enumerate(folds):
        rest = LeastSquaresData.joined(folds[:k] + folds[k + 1 :])
        solution = ridge_path(rest, energy_coeff, forces_coeff, intercept)
        fold_loss.append([_loss(held, *solution(a), energy_coeff, forces_coeff).numpy()
                          for a in alphas])  # fmt: skip
    fold_loss = np.array(fold_loss)
    frames = np.array([fold.num_frames for fold in folds], dtype=float)
    pooled = np.tensordot(frames / frames.sum(), fold_loss, axes=1)  # (alphas, heads)
    best = pooled.argmin(0)
    helped = (fold_loss[:, best, np.arange(len(best))] < fold_loss[:, -1]).sum(0)
    if np.isinf(alphas[-1]):  # feature weight must beat none on every fold
        best = np.where(helped == len(folds), best, len(alphas) - 1)
    solution = ridge_path(LeastSquaresData.joined(folds), energy_coeff, forces_coeff, intercept)
    solved = {i: solution(alphas[i]) for i in set(best.tolist())}  # once per chosen strength
    return RidgeSolution(
        weights=torch.stack([solved[i][0][:, h] for h, i in enumerate(best)], 1),
        intercepts=torch.stack([solved[i][1][:, h] for h, i in enumerate(best)], 1),
        alpha=np.asarray(alphas)[best],
        at_edge=(best == 0) | ((best == len(alphas) - 1) & np.isfinite(alphas[-1])),
        fold_loss=fold_loss,
        folds_helped=helped,
    )
