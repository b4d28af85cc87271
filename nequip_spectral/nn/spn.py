r"""SPN heads: degree-``d`` polynomials of equivariant features, read out along ``n``.

For features :math:`x` with irreps up to degree :math:`L`, a head's ``degree`` linear mixes
:math:`m_1(x), \dots, m_d(x)` (``channels`` copies of each irrep of :math:`x`) give the
products :math:`z_1 = m_1(x)`, :math:`z_k = z_{k-1} \otimes m_k(x)` (channel-wise, all coupling
paths, a weight per path and channel), so :math:`z_k` has degrees up to :math:`kL`. Every
:math:`z_k` is contracted with the harmonics of the marked direction to a per-atom scalar,

.. math::

    \phi(x, \hat n) = \sum_{k \le d} \sum_{c, \lambda} w_{kc\lambda}\,
    z_{k,c,\lambda} \cdot Y_\lambda(\hat n) / \sqrt{2\lambda + 1},

a polynomial of degree :math:`d` in :math:`x` and, as a function of :math:`\hat n`, a sum of
harmonics of degree at most :math:`dL`: the finite-degree span theorem's ceiling is built in.
This is, weight for weight, e3nn's ``o3.Linear`` mixes, ``TensorProduct`` ("uuu") products and
a ``FullyConnectedTensorProduct`` readout against :math:`Y(\hat n)` (tested), evaluated
without forming the last product: each of its coupling paths :math:`(l_1, l_2, \lambda)` is
the bilinear form :math:`z^\top T m` with :math:`T = C^{l_1 l_2 \lambda} \cdot Y_\lambda(\hat n)`,
computed once per atom for every channel and head.

:class:`SPNHeads` evaluates many independent heads (one per probed ``l``) at once, the head
being a batch dimension of every tensor and weight, and each head may read its own copy of
the features, so that one backward pass gives every head's gradient with respect to them.
"""

import math

import torch
from e3nn import o3
from e3nn.nn import Gate

MAX_HARMONIC_DEGREE = 12  # e3nn's o3.spherical_harmonics stops here


def irrep_blocks(irreps: o3.Irreps, tensor: torch.Tensor) -> list:
    """``(..., dim)`` -> one ``(..., mul, 2l+1)`` tensor per irrep block."""
    return [
        tensor[..., s].unflatten(-1, (mul, ir.dim))
        for s, (mul, ir) in zip(irreps.slices(), irreps, strict=True)
    ]


def harmonics_of_ceiling(irreps_in: o3.Irreps, degree: int) -> tuple[int, o3.Irreps]:
    """The ceiling ``dL`` of a degree-``degree`` head and the harmonics ``Y_0 .. Y_dL`` it reads."""
    ceiling = degree * irreps_in.lmax
    if ceiling > MAX_HARMONIC_DEGREE:
        raise ValueError(
            f"spectral_probe.degree: a degree-{degree} head on L = {irreps_in.lmax} features "
            f"needs harmonics of degree {ceiling}; e3nn provides up to {MAX_HARMONIC_DEGREE}"
        )
    return ceiling, o3.Irreps.spherical_harmonics(ceiling, p=-1)


def has_harmonic_parity(ir: o3.Irrep) -> bool:
    """The parity of :math:`Y_l`: only such blocks meet a harmonic of ``n``."""
    return ir.p == (-1) ** ir.l


class _HeadwiseLinear(torch.nn.Module):
    """An equivariant linear map per head, like ``o3.Linear`` with a head dimension.

    Every output block is a normalized sum over the input blocks of the same irrep.
    """

    def __init__(self, irreps_in: o3.Irreps, irreps_out: o3.Irreps, num_heads: int):
        super().__init__()
        self.irreps_in, self.irreps_out = irreps_in, irreps_out
        self.paths = [
            (i, j)
            for j, (_, ir_out) in enumerate(irreps_out)
            for i, (_, ir_in) in enumerate(irreps_in)
            if ir_in == ir_out
        ]
        self.weights = torch.nn.ParameterList(
            torch.randn(num_heads, irreps_in[i].mul, irreps_out[j].mul) for i, j in self.paths
        )
        self.fan_in = [
            sum(irreps_in[i].mul for i, jj in self.paths if jj == j) for j in range(len(irreps_out))
        ]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(heads, atoms, dim_in)`` -> ``(heads, atoms, dim_out)``."""
        blocks = irrep_blocks(self.irreps_in, x)
        out = [0.0] * len(self.irreps_out)
        for (i, j), weight in zip(self.paths, self.weights, strict=True):
            out[j] = out[j] + torch.einsum("hnui,huw->hnwi", blocks[i], weight)
        scaled = [block / math.sqrt(fan) for block, fan in zip(out, self.fan_in, strict=True)]
        return torch.cat([block.flatten(-2) for block in scaled], dim=-1)


def _channelwise_product(irreps_1: o3.Irreps, irreps_2: o3.Irreps, channels: int):
    """All coupling paths of two equal-multiplicity irreps, channel by channel ("uuu")."""
    outputs = sorted({ir for _, ir1 in irreps_1 for _, ir2 in irreps_2 for ir in ir1 * ir2})
    instructions = [
        (i1, i2, outputs.index(ir), "uuu", True)
        for i1, (_, ir1) in enumerate(irreps_1)
        for i2, (_, ir2) in enumerate(irreps_2)
        for ir in ir1 * ir2
    ]
    irreps_out = o3.Irreps([(channels, ir) for ir in outputs])
    return o3.TensorProduct(
        irreps_1, irreps_2, irreps_out, instructions, shared_weights=False, internal_weights=False
    )


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
        self.ceiling, self.irreps_harmonics = harmonics_of_ceiling(irreps_in, degree)
        self.irreps_mix = (
            o3.Irreps([(channels, ir) for _, ir in irreps_in.simplify()]).sort().irreps
        )
        self.gate = None if activation is None else _gate(self.irreps_mix)
        irreps_linear = self.irreps_mix if self.gate is None else self.gate.irreps_in
        self.mixes = torch.nn.ModuleList(
            _HeadwiseLinear(irreps_in, irreps_linear, num_heads) for _ in range(degree)
        )

        # z_1 .. z_{d-1}: read out linearly; the products that form them (degree 3)
        self.irreps_z = [self.irreps_mix]
        self.products = torch.nn.ModuleList()
        self.product_weights = torch.nn.ParameterList()
        for _ in range(2, degree):
            product = _channelwise_product(self.irreps_z[-1], self.irreps_mix, channels)
            self.products.append(product)
            self.product_weights.append(torch.randn(num_heads, product.weight_numel))
            self.irreps_z.append(product.irreps_out)
        # the readout: every natural-parity block of z_1 .. z_{d-1}, and every natural output
        # lambda of the last product z_{d-1} (x) m_d, met by Y_lambda(n) with a weight per
        # channel (e3nn's FullyConnectedTensorProduct to 0e)
        self.linear_blocks = [
            (k, i) for k, irreps in enumerate(self.irreps_z)
            for i, (_, ir) in enumerate(irreps) if has_harmonic_parity(ir)
        ]  # fmt: skip
        paths = [  # the last product's coupling paths (block of z, block of m, lambda)
            (i1, i2, ir.l)
            for i1, (_, ir1) in enumerate(self.irreps_z[-1])
            for i2, (_, ir2) in enumerate(self.irreps_mix)
            for ir in ir1 * ir2
            if degree > 1 and has_harmonic_parity(ir)
        ]
        outputs = sorted({lam for *_, lam in paths})
        # a path's bilinear form z^T T m, T = C . Y_lambda: its Clebsch-Gordan tensor (with
        # e3nn's factor sqrt(2 lambda + 1), which the readout's 1 / sqrt(2 lambda + 1) cancels)
        # at lambda's harmonics, zero-padded; and its share of its output (e3nn's "uuu"
        # product: 1 / sqrt(number of paths into the output))
        dim_z = max(ir.dim for _, ir in self.irreps_z[-1])
        dim_mix = max(ir.dim for _, ir in self.irreps_mix)
        coupling = torch.zeros(len(paths), dim_z, dim_mix, self.irreps_harmonics.dim)
        to_output = torch.zeros(len(paths), len(outputs))
        for p, (i1, i2, lam) in enumerate(paths):
            l1, l2 = self.irreps_z[-1][i1].ir.l, self.irreps_mix[i2].ir.l
            coupling[p, : 2 * l1 + 1, : 2 * l2 + 1, lam**2 : (lam + 1) ** 2] = o3.wigner_3j(
                l1, l2, lam
            )
            to_output[p, outputs.index(lam)] = 1 / math.sqrt(sum(q[2] == lam for q in paths))
        dtype = torch.get_default_dtype()
        self.register_buffer("coupling", coupling.to(dtype), persistent=False)
        self.register_buffer("to_output", to_output.to(dtype), persistent=False)
        self.paths = [(i1, i2, self.irreps_z[-1][i1].ir.dim, self.irreps_mix[i2].ir.dim)
                      for i1, i2, _ in paths]  # fmt: skip
        self.path_weights = torch.nn.Parameter(torch.randn(num_heads, channels, len(paths)))
        blocks = len(self.linear_blocks) + len(outputs)
        self.readout_weights = torch.nn.Parameter(torch.randn(num_heads, channels, blocks))
        self.readout_scale = 1 / math.sqrt(channels * blocks)

    @property
    def parameters_per_head(self) -> int:
        return sum(p.numel() for p in self.parameters()) // self.num_heads

    def forward(self, features: torch.Tensor, harmonics: torch.Tensor) -> torch.Tensor:
        """Per-atom outputs ``(num_heads, num_atoms)`` of every head.

        Args:
            features: ``(num_atoms, dim)``, shared by all heads, or ``(num_heads, num_atoms,
              dim)``, one copy per head
            harmonics: ``(num_atoms, dim_Y)`` harmonics of ``n``, as ``irreps_harmonics``
        """
        num_atoms = features.shape[-2]
        features = features.expand(self.num_heads, num_atoms, -1)
        Y = [block.squeeze(-2) for block in irrep_blocks(self.irreps_harmonics, harmonics)]

        def mix(linear):
            mixed = linear(features)
            if self.gate is not None:
                mixed = self.gate(mixed)
            return mixed

        z = [mix(self.mixes[0])]
        for k, product in enumerate(self.products, 1):  # degree 3: z_2 = z_1 (x) m_2
            rows = [t.reshape(-1, t.shape[-1]) for t in (z[-1], mix(self.mixes[k]))]
            weights = self.product_weights[k - 1].repeat_interleave(num_atoms, dim=0)
            z.append(product(*rows, weights).view(self.num_heads, num_atoms, -1))
        z_blocks = [irrep_blocks(irreps, t) for irreps, t in zip(self.irreps_z, z, strict=True)]

        linear = [
            torch.einsum("hnci,ni->hnc", z_blocks[k][i], Y[self.irreps_z[k][i].ir.l])
            / math.sqrt(self.irreps_z[k][i].ir.dim)
            for k, i in self.linear_blocks
        ]
        readout = [torch.stack(linear, dim=-1)]
        if self.paths:
            # per atom, all heads and channels side by side: (atoms, heads * channels, 2l+1)
            def by_atom(blocks):
                return [b.transpose(0, 1).reshape(num_atoms, -1, b.shape[-1]) for b in blocks]

            z_last = by_atom(z_blocks[-1])
            m_last = by_atom(irrep_blocks(self.irreps_mix, mix(self.mixes[-1])))
            forms = torch.einsum("pijk,nk->npij", self.coupling, harmonics)  # once per atom
            bilinear = [
                (torch.bmm(z_last[i1], forms[:, p, :di, :dj]) * m_last[i2]).sum(-1)
                for p, (i1, i2, di, dj) in enumerate(self.paths)
            ]
            bilinear = torch.stack(bilinear, dim=-1).unflatten(1, (self.num_heads, -1))
            bilinear = bilinear.transpose(0, 1) * self.path_weights.unsqueeze(1)
            readout.append(bilinear @ self.to_output)
        readout = torch.cat(readout, dim=-1)  # (heads, atoms, channels, readout blocks)
        return self.readout_scale * (readout * self.readout_weights.unsqueeze(1)).sum((-2, -1))
