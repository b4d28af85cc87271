r"""The injected signal of pure angular frequency ``l`` and its exact gradient.

One pair ``(i, j)`` with edge vector :math:`\vec r_{ij}` contributes, for a marked direction
:math:`\hat n`,

.. math::

    g_l(\vec r) = f_c(r) \sqrt{2l+1} \, P_l(\hat n \cdot \hat r),

whose gradient is

.. math::

    \nabla g_l = \sqrt{2l+1} \left[ f_c'(r) P_l(x) \hat r
        + f_c(r) P_l'(x) \frac{\hat n - x \hat r}{r} \right], \qquad x = \hat n \cdot \hat r.

Pure torch: no NequIP here.
"""

from collections.abc import Sequence

import torch


def legendre(x: torch.Tensor, l_max: int) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Legendre polynomials :math:`P_l(x)` and their derivatives for ``l = 0..l_max``.

    Bonnet's recursion :math:`(l+1) P_{l+1} = (2l+1) x P_l - l P_{l-1}` and
    :math:`P_{l+1}' = P_{l-1}' + (2l+1) P_l`; stable for :math:`|x| \le 1` at any ``l``.

    Returns:
        ``(P, dP)``, each of shape ``x.shape + (l_max + 1,)``

    >>> P, dP = legendre(torch.tensor([1.0]), 3)
    >>> P.tolist(), dP.tolist()
    ([[1.0, 1.0, 1.0, 1.0]], [[0.0, 1.0, 3.0, 6.0]])
    """
    P = [torch.ones_like(x), x]
    dP = [torch.zeros_like(x), torch.ones_like(x)]
    for l in range(1, l_max):
        P.append(((2 * l + 1) * x * P[l] - l * P[l - 1]) / (l + 1))
        dP.append(dP[l - 1] + (2 * l + 1) * P[l])
    return torch.stack(P[: l_max + 1], -1), torch.stack(dP[: l_max + 1], -1)


def polynomial_cutoff(
    r: torch.Tensor, cutoff: float, p: int = 6
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The polynomial envelope :math:`f_c(r)` of NequIP (Klicpera et al.) and :math:`f_c'(r)`.

    .. math::

        f_c = 1 - \tfrac{(p+1)(p+2)}{2} x^p + p(p+2) x^{p+1} - \tfrac{p(p+1)}{2} x^{p+2},
        \qquad f_c' = -\tfrac{p(p+1)(p+2)}{2 r_c} x^{p-1} (1 - x)^2,

    with :math:`x = r / r_c`; both vanish at and beyond the cutoff.
    """
    x = r / cutoff
    inside = x < 1.0
    f = (
        1.0
        - (p + 1) * (p + 2) / 2 * x**p
        + p * (p + 2) * x ** (p + 1)
        - p * (p + 1) / 2 * x ** (p + 2)
    )
    df = -p * (p + 1) * (p + 2) / (2 * cutoff) * x ** (p - 1) * (1 - x) ** 2
    return torch.where(inside, f, 0.0), torch.where(inside, df, 0.0)


def pair_signal(
    edge_vectors: torch.Tensor,
    direction: torch.Tensor,
    l_values: Sequence[int],
    cutoff: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Each pair's term :math:`g_l` and its gradient with respect to the edge vector.

    Args:
        edge_vectors: ``(num_pairs, 3)`` vectors :math:`\vec r_{ij} = \vec r_j - \vec r_i`
        direction: ``(3,)`` unit marked direction :math:`\hat n`
        l_values: the degrees ``l`` to evaluate
        cutoff: :math:`r_c`

    Returns:
        ``(values, gradients)`` of shapes ``(num_pairs, len(l_values))`` and
        ``(num_pairs, len(l_values), 3)``
    """
    r = edge_vectors.norm(dim=-1)
    unit = edge_vectors / r.unsqueeze(-1)
    x = (unit @ direction).clamp(-1.0, 1.0)
    f, df = polynomial_cutoff(r, cutoff)
    P, dP = legendre(x, max(l_values))
    index = torch.as_tensor(list(l_values), device=x.device)
    norm = torch.sqrt(2.0 * index.to(x.dtype) + 1.0)
    P, dP = P[:, index] * norm, dP[:, index] * norm
    values = f.unsqueeze(-1) * P
    tangent = (direction - x.unsqueeze(-1) * unit) / r.unsqueeze(-1)
    gradients = (df.unsqueeze(-1) * P).unsqueeze(-1) * unit.unsqueeze(1) + (
        f.unsqueeze(-1) * dP
    ).unsqueeze(-1) * tangent.unsqueeze(1)
    return values, gradients
