import pytest
import torch

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
    generator = torch.Generator().manual_seed(l)
    n = torch.randn(200_000, 3, dtype=torch.float64, generator=generator)
    n = n / n.norm(dim=1, keepdim=True)
    # the angular part sqrt(2l+1) P_l(n . rhat) of one pair's term, over uniform n
    term = (2 * l + 1) ** 0.5 * legendre(n[:, 2], l)[0][:, l]
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
