r"""SPN heads: degree-``d`` polynomials of equivariant features, read out along ``n``.

For features :math:`x` with irreps up to degree :math:`L`, a head's ``degree`` linear mixes
:math:`m_1(x), \dots, m_d(x)` (``channels`` copies of each irrep of :math:`x`) give the
products :math:`z_1 = m_1(x)`, :math:`z_k = z_{k-1} \otimes m_k(x)` (channel-wise, all coupling
paths, one weight per path and channel), so :math:`z_k` has degrees up to :math:`kL`. The
head's per-atom output is the invariant contraction

.. math::

    \phi(x, \hat n) = \sum_{k \le d} \sum_{\lambda \le kL} \langle W_{k\lambda} z_{k,\lambda},
    Y_\lambda(\hat n) \rangle,

a polynomial of degree :math:`d` in :math:`x` and, as a function of :math:`\hat n`, a sum of
harmonics of degree at most :math:`dL`: the finite-degree span theorem's ceiling is built in.

:class:`SPNHeads` evaluates many independent heads (one per probed ``l``) as one batch: the
rows are (head, atom) pairs and every e3nn module takes its weights per row, from the row's
head. One set of e3nn calls serves all heads, and each head's features can be its own copy,
so one backward pass gives every head's gradient with respect to the features.
"""

import torch
from e3nn import o3
from e3nn.nn import Gate

MAX_HARMONIC_DEGREE = 12  # e3nn's o3.spherical_harmonics stops here
_PER_ROW = {"shared_weights": False, "internal_weights": False}


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
    return o3.TensorProduct(irreps_1, irreps_2, irreps_out, instructions, **_PER_ROW)


def _gate(irreps_mix: o3.Irreps) -> Gate:
    """Gates every ``l > 0`` irrep of a mix by a sigmoid of a scalar of its own."""
    scalars = o3.Irreps([(mul, ir) for mul, ir in irreps_mix if ir.l == 0])
    gated = o3.Irreps([(mul, ir) for mul, ir in irreps_mix if ir.l > 0])
    return Gate(
        scalars,
        [torch.nn.functional.silu if ir.p == 1 else torch.tanh for _, ir in scalars],
        o3.Irreps(f"{gated.num_irreps}x0e"),
        [torch.sigmoid],
        gated,
    )


class _PerHead(torch.nn.Module):
    """An e3nn module with unshared weights, given each row the weights of its head."""

    def __init__(self, module: torch.nn.Module, num_heads: int):
        super().__init__()
        self.module = module
        self.weight = torch.nn.Parameter(torch.randn(num_heads, module.weight_numel))

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        rows_per_head = inputs[0].shape[0] // self.weight.shape[0]
        return self.module(*inputs, self.weight.repeat_interleave(rows_per_head, dim=0))


class SPNHeads(torch.nn.Module):
    """``num_heads`` independent heads :math:`\\phi_h(x, \\hat n)` (see module doc).

    Args:
        irreps_in: irreps of the tapped features, degree ``L``
        num_heads: number of independent heads
        degree: polynomial degree ``d`` (1, 2 or 3)
        channels: copies of each irrep in the linear mixes (the capacity)
        activation: ``None`` (an exact polynomial) or ``"gate"`` (gated mixes)
    """

    def __init__(self, irreps_in, num_heads: int, degree: int, channels: int, activation=None):
        super().__init__()
        irreps_in = o3.Irreps(irreps_in)
        self.num_heads = num_heads
        self.ceiling = degree * irreps_in.lmax
        if self.ceiling > MAX_HARMONIC_DEGREE:
            raise ValueError(
                f"spectral_probe.degree: a degree-{degree} head on L = {irreps_in.lmax} features "
                f"needs harmonics of degree {self.ceiling}; e3nn provides up to "
                f"{MAX_HARMONIC_DEGREE}"
            )
        irreps_mix = o3.Irreps([(channels, ir) for _, ir in irreps_in.simplify()]).sort().irreps
        self.gate = None if activation is None else _gate(irreps_mix)
        irreps_linear = irreps_mix if self.gate is None else self.gate.irreps_in
        self.mixes = torch.nn.ModuleList(
            _PerHead(o3.Linear(irreps_in, irreps_linear, **_PER_ROW), num_heads)
            for _ in range(degree)
        )
        self.products = torch.nn.ModuleList()
        irreps_z = [irreps_mix]
        for k in range(2, degree + 1):
            product = _channelwise_product(irreps_z[-1], irreps_mix, channels, k == degree)
            self.products.append(_PerHead(product, num_heads))
            irreps_z.append(product.irreps_out)
        self.irreps_harmonics = o3.Irreps.spherical_harmonics(self.ceiling, p=-1)
        readout = o3.FullyConnectedTensorProduct(
            sum(irreps_z, o3.Irreps()), self.irreps_harmonics, "0e", **_PER_ROW
        )
        self.readout = _PerHead(readout, num_heads)

    @property
    def parameters_per_head(self) -> int:
        return sum(p.numel() for p in self.parameters()) // self.num_heads

    def forward(self, features: torch.Tensor, harmonics: torch.Tensor) -> torch.Tensor:
        """Per-atom outputs ``(num_heads, num_atoms)`` of every head.

        Args:
            features: ``(num_atoms, dim)``, shared by all heads, or ``(num_heads, num_atoms,
              dim)``, one copy per head
            harmonics: ``(num_atoms, dim_Y)`` harmonics of ``n``
        """
        num_atoms, dim = features.shape[-2:]
        rows = features.expand(self.num_heads, num_atoms, dim).reshape(-1, dim)
        harmonics = harmonics.repeat(self.num_heads, 1)

        def mix(module):
            mixed = module(rows)
            return mixed if self.gate is None else self.gate(mixed)

        z = mix(self.mixes[0])
        terms = [z]
        for mixer, product in zip(self.mixes[1:], self.products, strict=True):
            z = product(z, mix(mixer))
            terms.append(z)
        return self.readout(torch.cat(terms, dim=-1), harmonics).view(self.num_heads, num_atoms)
