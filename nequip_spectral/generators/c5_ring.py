r"""The five-fold (C5) ring test system: a synthetic calibration with known answers, a centre
atom in a regular 5-fold ring (``nequip-spectral-make-c5``).

Each frame is a carbon atom at the origin and five hydrogens on a regular pentagon of radius
``R`` around it, optionally distorted, then turned by a uniformly random rotation. Two kinds of
distortion: random (each ring atom moved radially by :math:`\mathcal N(0, \sigma_r)` and out
of the plane by :math:`\mathcal N(0, \sigma_z)`, drawn anew for every frame) and systematic
(``stretch``: the first ring atom moved radially by :math:`\varepsilon` in every frame, so
every frame is one molecule, turned). Energies and forces come from an analytic potential of
distances only (harmonic springs between the centre and each ring atom, and between ring
neighbours and next neighbours, all at rest on the regular ring), so a backbone learns it in
minutes.

The known answers (``README``, "Calibration"), for ``centers: [C]``, ``neighbors: [H]``:

- On an exact ring every equivariant feature of the centre is invariant under the ring's
  symmetry, a rotation by :math:`2\pi/5` about its normal :math:`\hat z`: its degree-``l``
  part has components :math:`m \equiv 0 \pmod 5` only, so for ``l < 5`` only :math:`m = 0`,
  which does not change when the ring turns in its plane. A head that reads the centre's
  features of degree ``L < 5`` (``readout: centers``) is a function of :math:`\hat n \cdot
  \hat z` alone, whatever ``d_r``.
- The injected :math:`s_5 = \sum_j f_c(R) \sqrt{11} P_5(\hat n \cdot \hat r_j)` has, on a
  planar ring, no :math:`m = 0` part (:math:`P_5(0) = 0`: ring directions lie in the plane),
  only :math:`m = \pm 5`, which depends on the ring's in-plane orientation. So with
  ``readout: centers`` on exact rings nothing of ``l = 5`` is recoverable (rho = 0), even with
  ``d_r = 3`` whose ceiling ``d_r L = 6`` lies above 5; with ``readout: all`` the ring atoms'
  features break the symmetry and the ceiling is the span theorem's ``d_r L``.
- A systematic stretch :math:`\varepsilon` makes every frame one molecule, turned: the centre's
  features get parts with :math:`m = \pm 1, \pm 2` of size :math:`O(\varepsilon)` that turn
  with the ring, and a product of three of them reaches :math:`m = \pm 5` (2 + 2 + 1), so
  ``d_r = 3`` recovers ``l = 5`` from the centre once that :math:`O(\varepsilon^3)` part is
  resolved, and ``d_r = 2`` (ceiling 4) never does. A random distortion, drawn anew for every
  frame, gives the same products a random phase: what they share with :math:`s_5` is, at
  leading order, a third moment of the distortion (zero for a Gaussian), so the recoverable
  part grows with the ratio of systematic to random distortion.
"""

import math

import numpy as np
import torch
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

RING_RADIUS = 1.1  # A
SPRINGS = {1: 10.0, 2: 5.0}  # eV/A^2: ring neighbours (1 apart) and next neighbours (2 apart)
CENTER_SPRING = 20.0  # eV/A^2


def ring_energy(positions: torch.Tensor) -> torch.Tensor:
    """The analytic potential (eV) of a centre (row 0) and its five ring atoms (rows 1-5)."""
    center, ring = positions[0], positions[1:]
    energy = 0.5 * CENTER_SPRING * ((ring - center).norm(dim=1) - RING_RADIUS).square().sum()
    for step, spring in SPRINGS.items():
        rest = 2 * RING_RADIUS * math.sin(math.pi * step / 5)
        lengths = (ring - ring.roll(-step, dims=0)).norm(dim=1)
        energy = energy + 0.5 * spring * (lengths - rest).square().sum()
    return energy


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random rotation matrix (QR of a Gaussian matrix, signs fixed)."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def c5_frame(rotation, radial=None, out_of_plane=None) -> Atoms:
    """One frame: the ring in the xy plane (optionally distorted), then rotated, labelled."""
    angles = 2 * np.pi * np.arange(5) / 5
    radii = RING_RADIUS + (0.0 if radial is None else radial)
    ring = np.stack(
        [radii * np.cos(angles), radii * np.sin(angles), np.zeros(5) if out_of_plane is None
         else out_of_plane], axis=1,
    )  # fmt: skip
    positions = np.concatenate([np.zeros((1, 3)), ring]) @ np.asarray(rotation).T
    x = torch.tensor(positions, dtype=torch.float64, requires_grad=True)
    energy = ring_energy(x)
    (gradient,) = torch.autograd.grad(energy, x)
    atoms = Atoms("CH5", positions=positions)
    atoms.calc = SinglePointCalculator(atoms, energy=energy.item(), forces=-gradient.numpy())
    return atoms


def recoverable_at_leading_order(stretch: float, width: float) -> float:
    r"""The part of the centre's ``l = 5`` that a stretch (A) leaves recoverable under random
    radial shifts of standard deviation ``width`` (A), at leading order: the squared
    correlation of :math:`A^2 B` with :math:`s_5`, where :math:`A, B` are the ring's
    ``m = 2`` and ``m = 1`` Fourier sums of the radial shifts. With :math:`r = \varepsilon /
    (\sqrt 5 \sigma)` it is :math:`r^6 / ((r^4 + 4 r^2 + 2)(r^2 + 1))`; the out-of-plane
    shifts are left out."""
    if width == 0:
        return 1.0
    r2 = (stretch / width) ** 2 / 5
    return r2**3 / ((r2**2 + 4 * r2 + 2) * (r2 + 1))


def generate_c5(num_frames: int, seed: int = 0, radial: float = 0.0,
                out_of_plane: float = 0.0, stretch: float = 0.0) -> list[Atoms]:  # fmt: skip
    """``num_frames`` randomly oriented rings; ``radial``, ``out_of_plane``: widths of the
    random distortion (A); ``stretch``: the first ring atom's systematic radial shift (A)."""
    rng = np.random.default_rng(seed)
    systematic = stretch * np.eye(5)[0]
    frames = []
    for _ in range(num_frames):
        rotation = random_rotation(rng)
        frames.append(c5_frame(
            rotation, systematic + radial * rng.normal(size=5), out_of_plane * rng.normal(size=5)
        ))  # fmt: skip
    return frames
