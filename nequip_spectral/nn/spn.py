r"""The SPN head: a degree-``d`` polynomial of equivariant features, read out along ``n``.

For features :math:`x` with irreps up to degree :math:`L`, ``degree`` linear mixes
:math:`m_1(x), \dots, m_d(x)` (``channels`` copies of each irrep of :math:`x`) give the
products :math:`z_1 = m_1(x)`, :math:`z_k = z_{k-1} \otimes m_k(x)` (channel-wise, all coupling
paths, one weight per path and channel), so :math:`z_k` has degrees up to :math:`kL`. The
head's per-atom output is the invariant contraction

.. math::

    \phi(x, \hat n) = \sum_{k \le d} \sum_{\lambda \le kL} \langle W_{k\lambda} z_{k,\lambda},
    Y_\lambda(\hat n) \rangle,

a polynomial of degree :math:`d` in :math:`x` and, as a function of :math:`\hat n`, a sum of
harmonics of degree at most :math:`dL`: the finite-degree span theorem's ceiling is built in.
"""

import torch
from e3nn import o3
from e3nn.nn import Gate

MAX_HARMONIC_DEGREE = 12  # e3nn's o3.spherical_harmonics stops here


def _channelwise_product(
    irreps_1: o3.Irreps, irreps_2: o3.Irreps, channels: int, natural_only: bool
):
    r"""All coupling paths of two equal-multiplicity irreps, channel by channel ("uuu").

    ``natural_only`` keeps the outputs of parity ``(-1)^l``, the only ones the readout
    against :math:`Y_\lambda(\hat n)` uses: in the last product the others are dead work.
    """
    outputs = sorted(
        {
            ir
            for _, ir1 in irreps_1
            for _, ir2 in irreps_2
            for ir in ir1 * ir2
            if not natural_only or ir.p == (-1) ** ir.l
        }
    )
    irreps_out = o3.Irreps([(channels, ir) for ir in outputs])
    instructions = [
        (i1, i2, outputs.index(ir), "uuu", True)
        for i1, (_, ir1) in enumerate(irreps_1)
        for i2, (_, ir2) in enumerate(irreps_2)
        for ir in ir1 * ir2
        if ir in outputs
    ]
    return o3.TensorProduct(irreps_1, irreps_2, irreps_out, instructions)


def _mix(irreps_in: o3.Irreps, channels: int, activation) -> torch.nn.Module:
    """A linear mix to ``channels`` copies of each irrep of the input, optionally gated."""
    irreps_mix = o3.Irreps([(channels, ir) for _, ir in irreps_in.simplify()]).sort().irreps
    if activation is None:
        return o3.Linear(irreps_in, irreps_mix)
    scalars = o3.Irreps([(mul, ir) for mul, ir in irreps_mix if ir.l == 0])
    gated = o3.Irreps([(mul, ir) for mul, ir in irreps_mix if ir.l > 0])
    gate = Gate(
        scalars,
        [torch.nn.functional.silu if ir.p == 1 else torch.tanh for _, ir in scalars],
        o3.Irreps(f"{gated.num_irreps}x0e"),
        [torch.sigmoid],
        gated,
    )
    return torch.nn.Sequential(o3.Linear(irreps_in, gate.irreps_in), gate)


class SPNHead(torch.nn.Module):
    """Per-atom scalar :math:`\\phi(x, \\hat n)` of one probed frequency (see module doc).

    Args:
        irreps_in: irreps of the tapped features, degree ``L``
        degree: polynomial degree ``d`` (1, 2 or 3)
        channels: copies of each irrep in the linear mixes (the capacity)
        activation: ``None`` (an exact polynomial) or ``"gate"`` (gated mixes)
    """

    def __init__(self, irreps_in, degree: int, channels: int, activation=None):
        super().__init__()
        irreps_in = o3.Irreps(irreps_in)
        self.ceiling = degree * irreps_in.lmax
        if self.ceiling > MAX_HARMONIC_DEGREE:
            raise ValueError(
                f"spectral_probe.degree: a degree-{degree} head on L = {irreps_in.lmax} features "
                f"needs harmonics of degree {self.ceiling}; e3nn provides up to "
                f"{MAX_HARMONIC_DEGREE}"
            )
        self.mixes = torch.nn.ModuleList(
            [_mix(irreps_in, channels, activation) for _ in range(degree)]
        )
        irreps_mix = o3.Irreps([(channels, ir) for _, ir in irreps_in.simplify()]).sort().irreps
        self.products = torch.nn.ModuleList()
        irreps_z = [irreps_mix]
        for k in range(2, degree + 1):
            last = k == degree
            self.products.append(_channelwise_product(irreps_z[-1], irreps_mix, channels, last))
            irreps_z.append(self.products[-1].irreps_out)
        self.irreps_harmonics = o3.Irreps.spherical_harmonics(self.ceiling, p=-1)
        self.readout = o3.FullyConnectedTensorProduct(
            sum(irreps_z, o3.Irreps()), self.irreps_harmonics, "0e"
        )

    def forward(self, features: torch.Tensor, harmonics: torch.Tensor) -> torch.Tensor:
        """``(num_atoms, dim)`` features and ``(num_atoms, dim_Y)`` harmonics of ``n``."""
        z = self.mixes[0](features)
        terms = [z]
        for mix, product in zip(self.mixes[1:], self.products, strict=True):
            z = product(z, mix(features))
            terms.append(z)
        return self.readout(torch.cat(terms, dim=-1), harmonics)
