"""``SpectralInjection``: the data transform that injects a signal of pure angular frequency."""

import hashlib
import math

import ase.data
import torch
from nequip.data import AtomicDataDict, from_ase
from nequip.nn import with_edge_vectors_

from .._keys import (
    MARKED_CENTER_KEY,
    MARKED_DIRECTION_KEY,
    injected_energy_key,
    injected_forces_key,
    null_energy_key,
    null_forces_key,
)
from ..config import SpectralProbeConfig
from ..theory import pair_signal


class SpectralInjection(torch.nn.Module):
    r"""Adds the injected energy and forces of every probed ``l`` to each frame.

    For each probed ``l`` the frame gets ``spectral_energy_l{l}`` (:math:`\epsilon s_l`) and
    ``spectral_forces_l{l}`` (:math:`-\epsilon \nabla s_l`), exact gradients, with

    .. math::

        s_l = \sum_{i \in C} \sum_{j \in N(i)} f_c(r_{ij}) \sqrt{2l+1}
            P_l(\hat n \cdot \hat r_{ij}),

    and the marked direction :math:`\hat n` as ``spectral_direction``. For every null head
    (the closed form's, ``l > 0``) also ``spectral_null_energy_l{l}`` and
    ``spectral_null_forces_l{l}``: the same signal
    along the frame's null direction, drawn independently of :math:`\hat n`, which the null
    heads are fitted to (one more right-hand side each). Energies and forces are left
    untouched. Pairs come from the frame's neighbor list (periodic images
    included), so the transform goes after ``NeighborListTransform``:

    .. code-block:: yaml

      transforms:
        - _target_: nequip.data.transforms.ChemicalSpeciesToAtomTypeMapper
          ...
        - _target_: nequip.data.transforms.NeighborListTransform
          r_max: ${cutoff_radius}
        - _target_: nequip_spectral.SpectralInjection
          probe: ${spectral_probe}
          r_max: ${cutoff_radius}

    The ``random`` marked direction of a frame is drawn from a seed hashed from the probe
    seed and the frame's positions and species, so it is the same in every epoch, worker,
    process and rerun. ``shuffled`` (the null control) injects along that same direction but
    stores, for the SPN to read, a second direction drawn independently from the same seed:
    distributed as another frame's direction, unrelated to the injected one.

    With ``spectral_probe.center_fraction`` (one-element systems) the centers :math:`C` are
    a random subset of the center-species atoms of the frame, drawn from the same frame
    hash (another stream) and stored as ``spectral_center`` (``(num_atoms, 1)``, 1 for a
    marked center), each with all its neighbor-species neighbors :math:`N(i)` (see
    :class:`~nequip_spectral.config.SpectralProbeConfig`).

    Args:
        probe: the ``spectral_probe:`` block
        r_max: the neighbor-list cutoff, checked against ``spectral_probe.cutoff``
    """

    def __init__(self, probe, r_max: float | None = None):
        super().__init__()
        self.probe = SpectralProbeConfig.from_block(probe)
        if r_max is not None:
            self.probe.check_cutoff(r_max)
        self.center_numbers = [ase.data.atomic_numbers[s] for s in self.probe.centers]
        self.neighbor_numbers = [ase.data.atomic_numbers[s] for s in self.probe.neighbors]

    def forward(self, data: AtomicDataDict.Type) -> AtomicDataDict.Type:
        if AtomicDataDict.EDGE_INDEX_KEY not in data:
            raise KeyError(
                "SpectralInjection needs the neighbor list: place it after "
                "nequip.data.transforms.NeighborListTransform in `transforms`"
            )
        _check_finite(data)
        direction, read = self.marked_direction(data)
        return self.inject(data, direction, read, self.marked_centers(data))

    def inject(self, data, direction, read, marked) -> AtomicDataDict.Type:
        """:meth:`forward` with the marked direction (injected, read) and centers given."""
        numbers = data[AtomicDataDict.ATOMIC_NUMBERS_KEY].view(-1)
        edge_index = data[AtomicDataDict.EDGE_INDEX_KEY]
        edge_vectors = with_edge_vectors_(dict(data), with_lengths=False)[
            AtomicDataDict.EDGE_VECTORS_KEY
        ].to(torch.float64)

        # every marked center with all its neighbors (with center_fraction, a pair of two
        # marked atoms then counts both ways: the signal is a sum of per-center terms)
        is_neighbor = torch.isin(numbers, torch.tensor(self.neighbor_numbers))
        is_pair = (
            marked[edge_index[0]]
            & is_neighbor[edge_index[1]]
            & (edge_vectors.norm(dim=-1) < self.probe.cutoff)
        )
        centers, neighbors = edge_index[:, is_pair]
        dtype = data[AtomicDataDict.POSITIONS_KEY].dtype

        def add(along, l_values, energy_key, forces_key):  # eps s_l, -eps grad s_l
            values, gradients = pair_signal(
                edge_vectors[is_pair], along, l_values, self.probe.cutoff
            )
            # r_ij = r_j - r_i: d s / d r_j = +gradient, d s / d r_i = -gradient
            grad_pos = torch.zeros(len(numbers), *gradients.shape[1:], dtype=torch.float64)
            grad_pos.index_add_(0, neighbors, gradients).index_add_(0, centers, -gradients)
            energies, forces = values.sum(0), -grad_pos
            for k, l in enumerate(l_values):
                data[energy_key(l)] = (self.probe.amplitude * energies[k]).view(1, 1).to(dtype)
                data[forces_key(l)] = (self.probe.amplitude * forces[:, k]).to(dtype)

        add(direction, self.probe.l_values, injected_energy_key, injected_forces_key)
        nulls = self.probe.null_l_values
        if nulls:  # the null heads' signal
            add(self.null_direction(data), nulls, null_energy_key, null_forces_key)
        data[MARKED_DIRECTION_KEY] = read.view(1, 3).to(dtype)
        if self.probe.center_fraction is not None:
            data[MARKED_CENTER_KEY] = marked.view(-1, 1).to(torch.long)
        return data

    def marked_centers(self, data: AtomicDataDict.Type) -> torch.Tensor:
        """``(num_atoms,)`` bool: the frame's centers. Every center-species atom, or with
        ``center_fraction`` ``F`` a random subset of ``F n`` (rounded) of the ``n`` of them,
        at least one and, for ``n >= 2``, at most ``n - 1``, drawn from the frame's seed."""
        numbers = data[AtomicDataDict.ATOMIC_NUMBERS_KEY].view(-1)
        is_center = torch.isin(numbers, torch.tensor(self.center_numbers, device=numbers.device))
        fraction = self.probe.center_fraction
        if fraction is None:
            return is_center
        candidates = is_center.nonzero().view(-1)
        n = len(candidates)
        count = min(max(math.floor(fraction * n + 0.5), 1), max(n - 1, 1)) if n else 0
        generator = torch.Generator().manual_seed(
            _frame_seed(data, self.probe.seed, stream="centers")
        )
        chosen = candidates[torch.randperm(n, generator=generator)[:count].to(numbers.device)]
        marked = torch.zeros_like(is_center)
        marked[chosen] = True
        return marked

    def null_direction(self, data: AtomicDataDict.Type) -> torch.Tensor:
        """``(3,)`` float64: the frame's null direction, uniform on the sphere and independent
        of the marked one (another stream of the frame's seed)."""
        generator = torch.Generator().manual_seed(
            _frame_seed(data, self.probe.seed, stream="null")
        )
        direction = torch.randn(3, dtype=torch.float64, generator=generator)
        return direction / direction.norm()

    def marked_direction(self, data: AtomicDataDict.Type) -> tuple[torch.Tensor, torch.Tensor]:
        """The frame's unit marked direction ``n`` along which the signal is injected, and the
        one the SPN reads (the same but with ``shuffled``); float64, shape ``(3,)`` each."""
        name = self.probe.direction_field
        if name is None:
            seed = _frame_seed(data, self.probe.seed)
            injected, other = torch.randn(
                2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)
            )
            injected = injected / injected.norm()
            if self.probe.marked_direction == "shuffled":
                return injected, other / other.norm()
            return injected, injected
        if name not in data:
            raise KeyError(
                f"spectral_probe.marked_direction: field '{name}' is not in the data of "
                f"{_describe(data)}; add it to the dataset's `include_keys` (and register it "
                "as a graph field)"
            )
        vector = torch.as_tensor(data[name]).to(torch.float64).reshape(-1)
        if vector.numel() != 3 or not torch.isfinite(vector).all() or vector.norm() == 0:
            raise ValueError(
                f"spectral_probe.marked_direction: field '{name}' must be a finite, nonzero "
                f"3-vector per frame; got {data[name].tolist()} in {_describe(data)}"
            )
        vector = vector / vector.norm()
        return vector, vector


def frames_from_ase(atoms_list, transforms) -> list:
    """ASE frames as ``AtomicDataDict`` s, each passed through ``transforms`` in order."""
    frames = []
    for atoms in atoms_list:
        frame = from_ase(atoms)
        for transform in transforms:
            frame = transform(frame)
        frames.append(frame)
    return frames


def frame_digest(positions: torch.Tensor, species: torch.Tensor, seed: int = 0) -> bytes:
    """An 8-byte digest of a frame's positions and species (and a seed): the frame's identity."""
    digest = hashlib.blake2b(digest_size=8)
    digest.update(int(seed).to_bytes(8, "little", signed=True))
    digest.update(positions.detach().to(torch.float64).contiguous().cpu().numpy().tobytes())
    digest.update(species.detach().to(torch.int64).contiguous().cpu().numpy().tobytes())
    return digest.digest()


def _frame_seed(data: AtomicDataDict.Type, seed: int, stream: str = "") -> int:
    """A 64-bit seed from the probe seed and the frame's own positions and species.

    ``stream`` names an independent draw from the same frame (hashed once more with it as
    the personalization); ``""``: the marked direction's seed."""
    digest = frame_digest(
        data[AtomicDataDict.POSITIONS_KEY], data[AtomicDataDict.ATOMIC_NUMBERS_KEY], seed
    )
    if stream:
        digest = hashlib.blake2b(digest, digest_size=8, person=stream.encode()).digest()
    return int.from_bytes(digest, "little")


def _describe(data: AtomicDataDict.Type) -> str:
    """Name a frame by its content (transforms do not see the frame's index)."""
    numbers = data[AtomicDataDict.ATOMIC_NUMBERS_KEY].view(-1).tolist()
    formula = ase.Atoms(numbers=numbers).get_chemical_formula()
    first = data[AtomicDataDict.POSITIONS_KEY][0].tolist()
    return f"the frame {formula} whose first atom is at {first}"


def _check_finite(data: AtomicDataDict.Type) -> None:
    for key in (
        AtomicDataDict.POSITIONS_KEY,
        AtomicDataDict.TOTAL_ENERGY_KEY,
        AtomicDataDict.FORCE_KEY,
    ):
        if key in data and not torch.isfinite(data[key]).all():
            raise ValueError(f"non-finite {key} in {_describe(data)}")
