"""The ridge solution on what symmetric crystals give it: features that vanish, degenerate modes."""

import dataclasses

import pytest
import torch
from helpers import random_system

from nequip_spectral.theory import ridge
from nequip_spectral.theory.ridge import solve_ridge

ZEROS = [0, 5, 13]  # where features that vanish by symmetry are put, among 12 + 3
LIVE = [k for k in range(15) if k not in ZEROS]
CASES = [(40, 0), (8, 0), (20, 60)]  # primal; dual (8 frames < 12 features); with forces


def with_zero_features(data):
    """``data`` with three more features, at ``ZEROS``, that are exactly zero in every row."""
    embed = torch.eye(15, dtype=torch.float64)[:, LIVE]  # (15, 12), exact: ones and zeros
    return dataclasses.replace(
        data,
        energy_rows=data.energy_rows @ embed.T,
        force_gram=embed @ data.force_gram @ embed.T,
        force_moment=embed @ data.force_moment,
    )


def splits(frames, force_rows):
    train = random_system(frames, force_rows=force_rows)
    return train, random_system(30, force_rows=force_rows, seed=1), 1.0, float(bool(force_rows))


def assert_same(solution, expected):
    assert (solution.alpha == expected.alpha).all()
    assert torch.allclose(solution.weights, expected.weights, rtol=1e-10, atol=1e-12)
    assert torch.allclose(solution.intercepts, expected.intercepts, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("frames, force_rows", CASES)
def test_features_zero_in_every_row_are_removed(frames, force_rows, monkeypatch):
    """A feature zero in every row gets exactly no weight, and the others the solution of the
    problem without it (catches weights scattered back onto the wrong features). With the normal
    matrix, it never reaches the eigendecomposition (catches zeroing its row and column instead
    of removing it: an exactly repeated zero eigenvalue, on which MKL's ``eigh`` can fail)."""
    train, validation, *coeffs = splits(frames, force_rows)
    reduced = solve_ridge([train, validation], *coeffs)
    decomposed, eigh = [], torch.linalg.eigh

    def spy(matrix):
        decomposed.append(matrix)
        return eigh(matrix)

    monkeypatch.setattr(ridge.torch.linalg, "eigh", spy)
    full = solve_ridge([with_zero_features(train), with_zero_features(validation)], *coeffs)
    assert decomposed and all((matrix.diagonal() > 0).all() for matrix in decomposed)
    assert (full.weights[ZEROS] == 0).all()
    assert_same(dataclasses.replace(full, weights=full.weights[LIVE]), reduced)


@pytest.mark.parametrize("frames, force_rows", CASES)
def test_falls_back_where_torch_eigh_fails_to_converge(frames, force_rows, monkeypatch):
    """Where ``torch.linalg.eigh`` raises, the solution is the same from the fallback (catches
    no fallback, and one that returns anything but the eigenvalues and eigenvectors)."""
    train, validation, *coeffs = splits(frames, force_rows)
    expected = solve_ridge([train, validation], *coeffs)

    def fails(matrix):
        raise torch.linalg.LinAlgError("linalg.eigh: The algorithm failed to converge")

    monkeypatch.setattr(ridge.torch.linalg, "eigh", fails)
    assert_same(solve_ridge([train, validation], *coeffs), expected)
