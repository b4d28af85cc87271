r"""The closed-form SPN head's features: every equivariant monomial of the tapped features.

Once its channel mixes are fixed, an SPN head of degree ``d`` is linear in its remaining
weights. :class:`PolynomialFeatures` lists that linear span explicitly: for the tapped
features :math:`x` (irreps up to :math:`L`) and the marked direction :math:`\hat n`, the
per-atom features are the products of up to ``d`` channels of :math:`x`, coupled through every
Clebsch-Gordan path to a degree :math:`\lambda` of natural parity and contracted with
:math:`Y_\lambda(\hat n)`:

.. math::

    \phi_{u}(x, \hat n) = x_u \cdot Y_l(\hat n), \quad
    \phi_{uv\lambda}(x, \hat n) = (x_u \otimes x_v)_\lambda \cdot Y_\lambda(\hat n), \quad
    \phi_{uvw\mu\lambda}(x, \hat n) = ((x_u \otimes x_v)_\mu \otimes x_w)_\lambda
    \cdot Y_\lambda(\hat n).

Every head :math:`\sum_k w_k \phi_k` has, as a function of :math:`\hat n`, degree at most
:math:`dL`: the span theorem's ceiling. Two channels of one irrep are paired once (``u <= v``
where their coupling is symmetric, ``u < v`` where it is antisymmetric). When the number of
features at full width exceeds ``feature_budget``, each irrep is first projected by a seeded
random orthonormal mix to the most copies whose features fit the budget.
"""

import dataclasses

import torch
from e3nn import o3

from .spn import harmonics_of_ceiling, has_harmonic_parity, irrep_blocks


@dataclasses.dataclass(frozen=True)
class _Term:
    """A group of features: a product of ``order`` blocks coupled to ``lam``, read along Y."""

    order: int
    blocks: tuple  # order 1, 2: irrep blocks (i,) or (i, j); order 3: (pair index, k)
    lam: int
    count: int


@dataclasses.dataclass(frozen=True)
class _Pair:
    """The product ``(x_i (x) x_j)_lam`` (any parity), a factor of the degree-3 terms."""

    i: int
    j: int
    lam: int
    parity: int
    offset: int | None  # None: all channel pairs; 0: u <= v; 1: u < v

    def path(self, ls) -> tuple:
        return ls[self.i], ls[self.j], self.lam


def _offset(i: int, j: int, l_i: int, lam: int):
    """Channel pairs of ``x_i (x) x_j`` to keep: all for two blocks, else a triangle."""
    return None if i != j else (2 * l_i - lam) % 2  # 1: antisymmetric, the diagonal is zero


def _pair_count(mul_i: int, mul_j: int, offset) -> int:
    return mul_i * mul_j if offset is None else mul_i * (mul_i + 1 - 2 * offset) // 2


def _plan(irreps: o3.Irreps, degree: int):
    """The terms of degree 1..``degree`` and the degree-2 products the degree-3 ones reuse."""
    terms = [
        _Term(1, (i,), ir.l, mul) for i, (mul, ir) in enumerate(irreps) if has_harmonic_parity(ir)
    ]
    pairs = []
    for i, (mul_i, ir_i) in enumerate(irreps):
        for j, (mul_j, ir_j) in enumerate(irreps[i:], start=i):
            for ir in ir_i * ir_j:
                offset = _offset(i, j, ir_i.l, ir.l)
                count = _pair_count(mul_i, mul_j, offset)
                if degree >= 2 and has_harmonic_parity(ir):
                    terms.append(_Term(2, (i, j), ir.l, count))
                if degree >= 3 and count > 0:
                    pairs.append(_Pair(i, j, ir.l, ir.p, offset))
    for p, pair in enumerate(pairs):
        count = _pair_count(irreps[pair.i].mul, irreps[pair.j].mul, pair.offset)
        for k, (mul_k, ir_k) in enumerate(irreps):
            for ir in o3.Irrep(pair.lam, pair.parity) * ir_k:
                if has_harmonic_parity(ir):
                    terms.append(_Term(3, (p, k), ir.l, count * mul_k))
    return terms, pairs


def _keep(out: torch.Tensor, offset) -> torch.Tensor:
    """``(..., m, m')`` channel pairs in the last two dimensions -> ``(..., pairs)``."""
    if offset is None:
        return out.flatten(-2)
    u, v = torch.triu_indices(out.shape[-1], out.shape[-1], offset, device=out.device)
    return out[..., u, v]


class PolynomialFeatures(torch.nn.Module):
    """The per-atom features :math:`\\phi(x, \\hat n)` of a degree-``degree`` head (module doc).

    Args:
        irreps_in: irreps of the tapped features
        degree: polynomial degree ``d`` (1, 2 or 3)
        feature_budget: the most features; above it, each irrep is mixed to fewer copies
        seed: seed of the random mix
    """

    def __init__(self, irreps_in, degree: int, feature_budget: int, seed: int = 0):
        super().__init__()
        self.irreps_in = o3.Irreps(irreps_in)
        self.ceiling, self.irreps_harmonics = harmonics_of_ceiling(self.irreps_in, degree)

        def width(copies):  # the irreps mixed to at most ``copies`` copies each
            return o3.Irreps([(min(mul, copies), ir) for mul, ir in self.irreps_in])

        def count(irreps):
            return sum(term.count for term in _plan(irreps, degree)[0])

        copies = max(mul for mul, _ in self.irreps_in)
        while copies > 1 and count(width(copies)) > feature_budget:
            copies -= 1
        self.irreps_mix = width(copies)
        self.mixed = self.irreps_mix != self.irreps_in
        self.terms, self.pairs = _plan(self.irreps_mix, degree)
        self.num_features = count(self.irreps_mix)
        if self.num_features > feature_budget:
            raise ValueError(
                f"spectral_probe.feature_budget: a degree-{degree} head on {self.irreps_in} has "
                f"{self.num_features} features even with one copy of each irrep; raise "
                f"feature_budget to at least {self.num_features}"
            )
        generator = torch.Generator().manual_seed(seed)
        dtype = torch.get_default_dtype()
        for i, (mul, _) in enumerate(self.irreps_in):
            random = torch.randn(mul, mul, generator=generator, dtype=torch.float64)
            width = self.irreps_mix[i].mul
            mix = torch.linalg.qr(random)[0][:, :width] if self.mixed else torch.eye(mul)
            self.register_buffer(f"mix_{i}", mix.to(dtype))
        ls = {ir.l for _, ir in self.irreps_in}
        paths = {(ir_i.l, ir_j.l, ir.l) for _, ir_i in self.irreps_in for _, ir_j in self.irreps_in
                 for ir in ir_i * ir_j}  # fmt: skip
        paths |= {(l2, l, lam) for *_, l2 in list(paths) for l in ls
                  for lam in range(abs(l2 - l), l2 + l + 1)}  # fmt: skip
        self._cg = {path: o3.wigner_3j(*path).to(dtype) for path in paths}

    def _apply(self, fn, *args, **kwargs):  # the Clebsch-Gordan tensors follow device moves
        self._cg = {path: fn(cg) for path, cg in self._cg.items()}
        return super()._apply(fn, *args, **kwargs)

    def forward(self, features: torch.Tensor, harmonics: torch.Tensor) -> torch.Tensor:
        """``(..., atoms, dim)`` features, ``(atoms, dim_Y)`` harmonics -> ``(..., atoms, K)``."""
        x = [
            torch.einsum("...nui,uw->...nwi", block, getattr(self, f"mix_{i}").to(features.dtype))
            for i, block in enumerate(irrep_blocks(self.irreps_in, features))
        ]
        Y = [block.squeeze(-2).to(features.dtype) for block in
             irrep_blocks(self.irreps_harmonics, harmonics)]  # fmt: skip
        ls = [ir.l for _, ir in self.irreps_mix]

        def cg(*path):
            return self._cg[path].to(features.dtype)

        pairs = [  # (x_i (x) x_j)_lam: (..., atoms, pairs, 2 lam + 1)
            _keep(
                torch.einsum("...nua,...nvb,abc->...ncuv", x[p.i], x[p.j], cg(*p.path(ls))),
                p.offset,
            ).transpose(-1, -2)
            for p in self.pairs
        ]

        def read(a, l_a, b, l_b, lam, offset):  # (a (x) b)_lam . Y_lam, the product never formed
            form = torch.einsum("abc,nc->nab", cg(l_a, l_b, lam), Y[lam])
            return _keep(torch.einsum("...nua,nab,...nvb->...nuv", a, form, b), offset)

        columns = []
        for term in self.terms:
            if term.order == 1:
                (i,) = term.blocks
                columns.append(torch.einsum("...nui,ni->...nu", x[i], Y[term.lam]))
            elif term.order == 2:
                i, j = term.blocks
                offset = _offset(i, j, ls[i], term.lam)
                columns.append(read(x[i], ls[i], x[j], ls[j], term.lam, offset))
            else:
                p, k = term.blocks
                columns.append(read(pairs[p], self.pairs[p].lam, x[k], ls[k], term.lam, None))
        return torch.cat(columns, dim=-1)


class LinearHeads(torch.nn.Module):
    """``num_heads`` heads :math:`\\phi(x, \\hat n) \\cdot w_h`, linear in their weights.

    The closed-form solver sets ``weights`` (and ``alpha``, the ridge strength each head was
    solved with); its forward has :class:`~nequip_spectral.nn.spn.SPNHeads`'s interface.

    Args:
        irreps_in, degree, feature_budget, seed: as :class:`PolynomialFeatures`
        num_heads: number of heads
    """

    def __init__(self, irreps_in, num_heads: int, degree: int, feature_budget: int, seed: int = 0):
        super().__init__()
        self.features = PolynomialFeatures(irreps_in, degree, feature_budget, seed)
        self.irreps_harmonics = self.features.irreps_harmonics
        self.num_heads = num_heads
        self.weights = torch.nn.Parameter(torch.zeros(self.features.num_features, num_heads))
        self.register_buffer("alpha", torch.full((num_heads,), float("nan")))

    @property
    def parameters_per_head(self) -> int:
        return self.features.num_features

    def forward(self, features: torch.Tensor, harmonics: torch.Tensor) -> torch.Tensor:
        """Per-atom outputs ``(num_heads, num_atoms)``; ``features`` as in ``SPNHeads``."""
        phi = self.features(features, harmonics)
        if phi.dim() == 3:  # one copy of the features per head
            return torch.einsum("hnk,kh->hn", phi, self.weights.to(phi.dtype))
        return (phi @ self.weights.to(phi.dtype)).T
