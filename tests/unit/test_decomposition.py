"""rho's two parts: what was recovered of the injection, and chance terms."""

import numpy as np
import torch

from nequip_spectral.theory.metrics import frame_sums, spectrum


def test_rho_is_its_recovered_part_plus_the_chance_inner_products():
    """On arbitrary values (not a fit), the chance part equals the two inner products written
    out, ``2 <y0, e> + 2 <t0 - y0, delta>`` over the injected power, and the parts add up to
    rho. (Fails when ``rho_recovered`` reads the variance instead of the mean square, or when
    the chance part drops either inner product.)"""
    generator = torch.Generator().manual_seed(0)
    frame = torch.arange(6).repeat_interleave(5)  # 6 frames of 5 values

    def randn(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    t0, y0, e, delta = randn(30), randn(30), 0.5 + randn(30), randn(30)
    column = [v[:, None] for v in (t0 + e, y0 + delta, y0, e)]  # (values, 1 component)
    head = frame_sums(*column, frame, 6).sum(0).numpy()
    control = np.array([30.0, float(t0.square().sum()), float((t0 - y0).square().sum())])
    result = spectrum(head[None], control)
    power = float(e.square().mean())
    chance = 2 * float((y0 * e).mean() + ((t0 - y0) * delta).mean()) / power
    recovered = 1 - float((e - delta).square().mean()) / power
    np.testing.assert_allclose(result["rho_chance"][0], chance, rtol=1e-12)
    np.testing.assert_allclose(result["rho_recovered"][0], recovered, rtol=1e-12)
    np.testing.assert_allclose(result["rho_recovered"] + result["rho_chance"], result["rho"],
                               rtol=1e-12)  # fmt: skip


def test_the_injected_target_has_no_chance_part():
    """``target: injected``: ``t0 = 0`` and the control head predicts 0, so rho is all
    recovered."""
    generator = torch.Generator().manual_seed(1)
    e, delta = (torch.randn(20, generator=generator, dtype=torch.float64) for _ in range(2))
    zero = torch.zeros(20, dtype=torch.float64)
    column = [v[:, None] for v in (e, delta, zero, e)]
    head = frame_sums(*column, torch.arange(20), 20).sum(0).numpy()
    result = spectrum(head[None], np.array([20.0, 0.0, 0.0]))
    assert abs(result["rho_chance"][0]) < 1e-12  # (round-off of rho - rho_recovered)
    np.testing.assert_allclose(result["rho"], result["rho_recovered"], rtol=1e-12)
