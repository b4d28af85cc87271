import numpy as np
import pytest
import torch
from ase import Atoms
from nequip.data import from_ase
from nequip.data.transforms import NeighborListTransform

from nequip_spectral._keys import MARKED_DIRECTION_KEY, injected_energy_key, injected_forces_key
from nequip_spectral.data import SpectralInjection
from nequip_spectral.theory import legendre, pair_signal, polynomial_cutoff


def test_legendre_closed_forms_and_derivatives():
    x = torch.linspace(-1, 1, 41, dtype=torch.float64, requires_grad=True)
    P, dP = legendre(x, 8)
    assert torch.allclose(P[:, 2], (3 * x**2 - 1) / 2)
    assert torch.allclose(P[:, 3], (5 * x**3 - 3 * x) / 2)
    assert torch.allclose(P[:, 4], (35 * x**4 - 30 * x**2 + 3) / 8)
    for l in range(9):
        (grad,) = torch.autograd.grad(P[:, l].sum(), x, retain_graph=True)
        assert torch.allclose(dP[:, l], grad), l


@pytest.mark.parametrize("l", range(9))
def test_pair_term_has_unit_mean_power_over_directions(l):
    """``pair_signal``'s angular part has unit mean square over uniform directions.

    Catches: (a) no ``sqrt(2l+1)`` (for ``l >= 1``).
    """
    generator = torch.Generator().manual_seed(l)
    rhat = torch.randn(200_000, 3, dtype=torch.float64, generator=generator)
    rhat = rhat / rhat.norm(dim=1, keepdim=True)
    n = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    # pairs so short that f_c = 1 - O(1e-18): the term is sqrt(2l+1) P_l(n . rhat) alone
    term = pair_signal(1e-3 * rhat, n, [l], cutoff=1.0)[0][:, 0]
    assert term.square().mean().item() == pytest.approx(1.0, abs=0.03)


def test_cutoff_is_smooth():
    r = torch.tensor([3.999999, 4.0, 4.5], dtype=torch.float64)
    f, df = polynomial_cutoff(r, 4.0)
    assert f.abs().max() < 1e-12 and df.abs().max() < 1e-9
    f0, _ = polynomial_cutoff(torch.tensor([0.0], dtype=torch.float64), 4.0)
    assert f0.item() == 1.0
    # the analytic derivative matches autograd inside the cutoff
    r = torch.linspace(0.5, 3.9, 30, dtype=torch.float64, requires_grad=True)
    f, df = polynomial_cutoff(r, 4.0)
    (grad,) = torch.autograd.grad(f.sum(), r)
    assert torch.allclose(df, grad)


def test_pair_signal_gradient_matches_autograd():
    generator = torch.Generator().manual_seed(0)
    vectors = (2 * torch.rand(50, 3, dtype=torch.float64, generator=generator) - 1) * 2.5
    vectors.requires_grad_(True)
    direction = torch.tensor([0.3, -0.5, 0.8], dtype=torch.float64)
    direction = direction / direction.norm()
    values, gradients = pair_signal(vectors, direction, [0, 1, 4, 7], cutoff=3.0)
    for k in range(4):
        (grad,) = torch.autograd.grad(values[:, k].sum(), vectors, retain_graph=True)
        assert torch.allclose(gradients[:, k], grad, atol=1e-12), k


# The signal pinned to its formula, on a frame built by hand: every number below comes from
# the spec, s_l = sum_{i in C} sum_{j in N(i)} f_c(r_ij) sqrt(2l+1) P_l(n . rhat_ij), written
# out with explicit polynomials, never from the package's own functions.
CUTOFF = 3.0
AMPLITUDE = 0.07
N_HAT = np.array([0.48, -0.36, 0.8])  # unit
SYMBOLS = "CHHHC"
POSITIONS = np.array(
    [
        [0.0, 0.0, 0.0],  # 0: C, a center
        [0.9, 0.0, 1.2],  # 1: H, 1.5 from C0 and 2.0 from C4
        [-1.2, 1.6, 0.0],  # 2: H, 2.0 from C0 (4.03 from C4)
        [0.0, 0.0, -3.4],  # 3: H, 3.4 from C0: in the neighbor list (r_max 4), beyond the cutoff
        [2.5, 0.0, 0.0],  # 4: C, a center
    ]
)
CENTERS, NEIGHBORS = (0, 4), (1, 2, 3)
PAIRS_INSIDE = [(0, 1), (0, 2), (4, 1)]  # (center, neighbor) with r < CUTOFF
L_TESTED = [0, 1, 2, 3, 4]

# P_l and P_l' for the tested l
LEGENDRE = {
    0: (lambda x: 1.0, lambda x: 0.0),
    1: (lambda x: x, lambda x: 1.0),
    2: (lambda x: (3 * x**2 - 1) / 2, lambda x: 3 * x),
    3: (lambda x: (5 * x**3 - 3 * x) / 2, lambda x: (15 * x**2 - 3) / 2),
    4: (lambda x: (35 * x**4 - 30 * x**2 + 3) / 8, lambda x: (35 * x**3 - 15 * x) / 2),
}


def cutoff_by_hand(r):
    """NequIP's polynomial envelope with p = 6, and its derivative, for r < CUTOFF."""
    u = r / CUTOFF
    f = 1 - 28 * u**6 + 48 * u**7 - 21 * u**8
    df = -168 / CUTOFF * u**5 * (1 - u) ** 2
    return f, df


def pair_term_by_hand(v, l):
    """g_l(v) = f_c(r) sqrt(2l+1) P_l(n . v / r) of one center->neighbor vector v, and its
    gradient with respect to v."""
    r = np.linalg.norm(v)
    rhat = v / r
    x = N_HAT @ rhat
    f, df = cutoff_by_hand(r)
    P, dP = LEGENDRE[l]
    norm = np.sqrt(2 * l + 1)
    value = norm * f * P(x)
    gradient = norm * (df * P(x) * rhat + f * dP(x) * (N_HAT - x * rhat) / r)
    return value, gradient


def injected_energy_by_hand(positions, l):
    """eps * s_l of the frame: C -> H pairs inside the cutoff, rhat from center to neighbor."""
    total = 0.0
    for i in CENTERS:
        for j in NEIGHBORS:
            v = positions[j] - positions[i]
            if np.linalg.norm(v) < CUTOFF:
                total += pair_term_by_hand(v, l)[0]
    return AMPLITUDE * total


def test_pair_signal_equals_the_formula_written_out():
    """``pair_signal`` of each center->neighbor vector equals f_c sqrt(2l+1) P_l(n . rhat)
    and its gradient, even and odd l.

    Catches: (a) no ``sqrt(2l+1)``; (b) center and neighbor swapped in ``pair_signal`` (rhat
    negated: odd l flip sign); (d) f_c = 1 inside the cutoff.
    """
    inside = [
        (i, j)
        for i in CENTERS
        for j in NEIGHBORS
        if np.linalg.norm(POSITIONS[j] - POSITIONS[i]) < CUTOFF
    ]
    assert inside == PAIRS_INSIDE  # the frame is as designed
    vectors = np.array([POSITIONS[j] - POSITIONS[i] for i, j in PAIRS_INSIDE])
    values, gradients = pair_signal(
        torch.as_tensor(vectors), torch.as_tensor(N_HAT), L_TESTED, cutoff=CUTOFF
    )
    for k, l in enumerate(L_TESTED):
        for p, v in enumerate(vectors):
            value, gradient = pair_term_by_hand(v, l)
            assert values[p, k].item() == pytest.approx(value, rel=1e-12, abs=1e-14), (l, p)
            np.testing.assert_allclose(gradients[p, k].numpy(), gradient, rtol=1e-12, atol=1e-14)
    # beyond the cutoff a pair contributes nothing
    far = torch.as_tensor(POSITIONS[3] - POSITIONS[0]).view(1, 3)
    values, gradients = pair_signal(far, torch.as_tensor(N_HAT), L_TESTED, cutoff=CUTOFF)
    assert not values.any() and not gradients.any()


def inject_hand_built_frame():
    """The hand-built frame through the neighbor list and ``SpectralInjection``, n fixed."""
    probe = {
        "l_values": L_TESTED,
        "centers": ["C"],
        "neighbors": ["H"],
        "cutoff": CUTOFF,
        "amplitude": AMPLITUDE,
        "marked_direction": "field:test_direction",
    }
    data = from_ase(Atoms(SYMBOLS, positions=POSITIONS))
    data["test_direction"] = torch.as_tensor(2.5 * N_HAT).view(1, 3)  # normalized on reading
    data = NeighborListTransform(r_max=4.0)(data)
    return SpectralInjection(probe, r_max=4.0)(data)


def test_injection_energy_equals_the_formula_written_out():
    """``SpectralInjection`` stores eps * s_l of the spec for even and odd l, and n.

    Catches: (a) no ``sqrt(2l+1)``; (b) center and neighbor swapped, in ``pair_signal`` or in
    the transform's pairs; (c) amplitude dropped (eps = 1) or doubled; (d) f_c = 1 inside the
    cutoff.
    """
    data = inject_hand_built_frame()
    np.testing.assert_allclose(data[MARKED_DIRECTION_KEY].view(-1).numpy(), N_HAT, rtol=1e-15)
    for l in L_TESTED:
        expected = injected_energy_by_hand(POSITIONS, l)
        assert abs(expected) > 0.5 * AMPLITUDE, l  # far from zero: a sign flip shows
        energy = data[injected_energy_key(l)]
        assert energy.shape == (1, 1)
        assert energy.item() == pytest.approx(expected, rel=1e-12)


def test_injection_forces_equal_finite_differences_of_the_formula():
    """``SpectralInjection``'s forces are -d(eps s_l)/d(positions) of the hand-written energy,
    by central finite differences in float64, on every atom (the one beyond the cutoff feels
    nothing).

    Catches: (a) no ``sqrt(2l+1)``; (b) center and neighbor swapped, in ``pair_signal`` or in
    the transform's pairs; (c) amplitude dropped (eps = 1) or doubled; (d) f_c = 1 inside the
    cutoff.
    """
    data = inject_hand_built_frame()
    h = 1e-5
    for l in L_TESTED:
        numeric = np.zeros_like(POSITIONS)
        for atom in range(len(POSITIONS)):
            for axis in range(3):
                plus, minus = POSITIONS.copy(), POSITIONS.copy()
                plus[atom, axis] += h
                minus[atom, axis] -= h
                numeric[atom, axis] = -(
                    injected_energy_by_hand(plus, l) - injected_energy_by_hand(minus, l)
                ) / (2 * h)
        analytic = data[injected_forces_key(l)].numpy()
        assert analytic.shape == POSITIONS.shape
        scale = np.abs(numeric).max()
        assert scale > 1e-3 * AMPLITUDE, l
        np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-6 * scale, err_msg=l)
        assert not analytic[3].any()
