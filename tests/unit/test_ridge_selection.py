"""Each head's ridge strength chosen by exact leave-one-frame-out on all the fitting frames."""

import numpy as np
import pytest
import torch
from helpers import random_system

from nequip_spectral.theory.ridge import ALPHAS, LeastSquaresData, solve_ridge


@pytest.mark.parametrize("frames, features", [(25, 6), (12, 30)])  # primal; dual (12 < 30)
def test_leave_one_out_errors_equal_refits_without_each_frame(frames, features):
    """The closed-form errors equal, at every strength, those of heads (and per-type
    intercepts) refitted on the other frames with the same penalty, predicting the left-out
    one."""
    data = random_system(frames, num_features=features)
    alphas = [1e-3, 0.1, 3.0]
    closed_form = solve_ridge(data, None, 2.0, 0.0, np.array(alphas)).selection_loss

    x, types, t = data.energy_rows, data.energy_types, data.energy_targets
    partialled = x - types @ torch.linalg.pinv(types) @ x
    scale = partialled.square().mean(0)  # the solver's unit-diagonal scaling, from all frames
    design = torch.cat([x, types], dim=1)
    for a, alpha in enumerate(alphas):
        penalty = torch.diag(torch.cat([frames * alpha * scale, torch.zeros(types.shape[1])]))
        errors = []
        for i in range(frames):
            rest = torch.arange(frames) != i
            normal = design[rest].T @ design[rest] + penalty.to(design)
            coefficients = torch.linalg.solve(normal, design[rest].T @ t[rest])
            errors.append(design[i] @ coefficients - t[i])
        refits = 2.0 * torch.stack(errors).square().mean(0)
        np.testing.assert_allclose(closed_form[a], refits.numpy(), rtol=1e-8)


def noisy_linear_frames(n, truth, noise, generator) -> LeastSquaresData:
    """``n`` frames of targets ``rows @ truth`` plus noise of the given size per head."""
    rows = torch.randn(n, truth.shape[0], generator=generator, dtype=torch.float64)
    error = torch.randn(n, truth.shape[1], generator=generator, dtype=torch.float64)
    data = LeastSquaresData.empty(*truth.shape[:1], 1, truth.shape[1])
    data.add_energies(rows, torch.ones(n, 1), rows @ truth + noise * error)
    return data


def test_leave_one_out_reaches_the_best_strength_within_a_grid_step():
    """Features carrying a known linear signal under noise of known size: the strength chosen
    by leave-one-out on 2,000 frames is, for every head and seed, within one grid step of the
    one with the lowest error on 20,000 fresh frames (the true best of the grid); the error
    on the training frames alone picks strengths near the grid's smallest instead."""
    # the noise sets the best strength (about noise^2 / frames: 0.1 and 1 here)
    noise = torch.tensor([15.0, 45.0], dtype=torch.float64)
    step = np.log10(ALPHAS[1] / ALPHAS[0])
    for seed in range(5):
        generator = torch.Generator().manual_seed(seed)
        truth = torch.randn(40, 2, generator=generator, dtype=torch.float64)
        fitting = noisy_linear_frames(2000, truth, noise, generator)
        fresh = noisy_linear_frames(20_000, truth, noise, generator)
        chosen = solve_ridge(fitting, None, 1.0, 0.0).alpha
        best = solve_ridge(fitting, fresh, 1.0, 0.0).alpha  # the same fit, chosen on the truth
        assert np.abs(np.log10(chosen / best)).max() <= step + 1e-9, (chosen, best)
        assert (best > ALPHAS[0]).all()  # the noise makes shrinking worth it

        # without leaving frames out, the fit to noise looks best
        on_itself = solve_ridge(fitting, fitting, 1.0, 0.0).alpha
        assert (on_itself <= 1e-6).all(), on_itself


def test_leave_one_out_needs_every_row():
    data = random_system(20, force_rows=30)
    with pytest.raises(ValueError, match="force rows are kept as sums"):
        solve_ridge(data, None, 1.0, 1.0)
