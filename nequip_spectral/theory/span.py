r"""The finite-degree span theorem: the degrees a degree-``d`` SPN on degree-``L`` features sees.

For a unit vector :math:`u`, polynomials of degree :math:`\le d` in the real spherical
harmonics :math:`Y_l(u), l \le L` span exactly the harmonics of degree :math:`\le dL`:

.. math::

    \dim V_\lambda = 2\lambda + 1 \ (\lambda \le dL), \qquad
    \dim V_\lambda = 0 \ (\lambda > dL), \qquad \dim \bigoplus_\lambda V_\lambda = (dL+1)^2,

and the top degree :math:`dL` is reached by one product only, :math:`Y_L^{\otimes d}`. So the
predicted ceiling is :math:`l^* = dL`. :func:`verify_span` checks this numerically by least
squares on random directions; ``nequip-spectral-span`` prints :func:`span_table`.
"""

import torch
from e3nn import o3

from .signal import legendre


def span_dimensions(L: int, degree: int, up_to: int) -> dict[int, int]:
    """Closed-form dimension of the span's degree-``lam`` part for ``lam = 0..up_to``."""
    return {lam: 2 * lam + 1 if lam <= degree * L else 0 for lam in range(up_to + 1)}


def tensor_power_multiplicities(L: int, degree: int) -> dict[int, int]:
    r"""How many coupling paths of :math:`(\oplus_{l \le L} V_l)^{\otimes d}` end in degree ``lam``.

    Counted with the Clebsch-Gordan rule :math:`|l_1 - l_2| \le \lambda \le l_1 + l_2`.

    >>> tensor_power_multiplicities(2, 2)[4]
    1
    """
    paths = {l: 1 for l in range(L + 1)}
    for _ in range(degree - 1):
        coupled: dict[int, int] = {}
        for l1, count in paths.items():
            for l2 in range(L + 1):
                for lam in range(abs(l1 - l2), l1 + l2 + 1):
                    coupled[lam] = coupled.get(lam, 0) + count
        paths = coupled
    return dict(sorted(paths.items()))


def boundary_multiplicity(L: int, degree: int) -> int:
    """Number of coupling paths reaching the ceiling ``degree * L`` (always 1)."""
    return tensor_power_multiplicities(L, degree)[degree * L]


def _random_directions(n: int, generator: torch.Generator) -> torch.Tensor:
    u = torch.randn(n, 3, dtype=torch.float64, generator=generator)
    return u / u.norm(dim=1, keepdim=True)


def verify_span(
    L: int, degree: int, up_to: int, n_fit: int = 2000, n_test: int = 1000, seed: int = 0
) -> dict[str, object]:
    r"""Measure the span numerically on random directions.

    Builds an orthonormal basis (on ``n_fit`` fitting directions) of the polynomials of
    degree :math:`\le d` in :math:`Y_{l \le L}`, one degree at a time
    (span\ :sub:`k` = span\ :sub:`k-1` times :math:`Y`), then fits :math:`2\lambda+1` zonal
    harmonics :math:`P_\lambda(m_k \cdot u)` with random axes :math:`m_k` (together they span
    :math:`V_\lambda`) by least squares and scores them on ``n_test`` held-out directions.

    Returns:
        ``{"rank": int, "dimensions": {lam: float}}``: the basis size, and per degree the
        held-out :math:`R^2` summed over the :math:`2\lambda+1` zonal functions (the measured
        dimension of the span's degree-``lam`` part; compare :func:`span_dimensions`)
    """
    generator = torch.Generator().manual_seed(seed)
    u = _random_directions(n_fit + n_test, generator)
    harmonics = o3.spherical_harmonics(list(range(L + 1)), u, normalize=True)
    fit = slice(0, n_fit)

    basis = torch.ones(len(u), 1, dtype=torch.float64)
    for _ in range(degree):
        products = (basis.unsqueeze(2) * harmonics.unsqueeze(1)).flatten(1)
        _, s, vh = torch.linalg.svd(products[fit], full_matrices=False)
        keep = s > 1e-9 * s[0]
        basis = products @ (vh[keep].T / s[keep])  # orthonormal on the fitting directions

    dimensions = {}
    for lam in range(up_to + 1):
        axes = _random_directions(2 * lam + 1, generator)
        target = legendre(u @ axes.T, lam)[0][..., lam]  # (n, 2 lam + 1)
        prediction = basis @ (basis[fit].T @ target[fit])
        test = slice(n_fit, None)
        residual = (prediction[test] - target[test]).square().sum(0)
        total = (target[test] - target[test].mean(0)).square().sum(0)
        if lam == 0:  # the constant: judge by absolute error
            total = target[test].square().sum(0)
        dimensions[lam] = float((1 - residual / total).clamp(min=0).sum())
    return {"rank": basis.shape[1], "dimensions": dimensions}


def span_table(L_values=(1, 2, 3, 4), degrees=(1, 2, 3)) -> str:
    """The predicted ceiling and the measured span for every ``(L, d)``, as text."""
    header = (
        f"{'L':>2} {'d':>2} {'ceiling':>8} {'dim':>5} {'rank':>5} {'mult(dL)':>9} "
        f"{'dim V_dL':>9} {'measured':>9} {'dim V_dL+1':>11} {'measured':>9}"
    )
    rows = [header, "-" * len(header)]
    for L in L_values:
        for d in degrees:
            top = d * L
            closed = span_dimensions(L, d, top + 1)
            measured = verify_span(L, d, top + 1)
            rows.append(
                f"{L:>2} {d:>2} {top:>8} {sum(closed.values()):>5} {measured['rank']:>5} "
                f"{boundary_multiplicity(L, d):>9} {closed[top]:>9} "
                f"{measured['dimensions'][top]:>9.2f} {closed[top + 1]:>11} "
                f"{measured['dimensions'][top + 1]:>9.2f}"
            )
    return "\n".join(rows)
