"""The five-fold (C5) ring test system: labels, determinism, and the symmetry its known answers
rest on."""

import numpy as np
import pytest
import torch
from nequip.data import AtomicDataDict, from_ase
from nequip.data.transforms import ChemicalSpeciesToAtomTypeMapper, NeighborListTransform

from nequip_spectral.generators.c5_ring import (
    c5_frame,
    generate_c5,
    random_rotation,
    recoverable_at_leading_order,
    ring_energy,
)
from nequip_spectral.model.frozen_spn import load_frozen_backbone


def turned(angle: float) -> np.ndarray:
    """A rotation by ``angle`` about z: the ring turned in its own plane."""
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def test_forces_are_minus_the_energy_gradient():
    atoms = generate_c5(1, seed=3, radial=0.05, out_of_plane=0.1)[0]
    forces, h = atoms.get_forces(), 1e-6
    for atom, axis in [(0, 2), (3, 0)]:
        energies = []
        for sign in (1, -1):
            moved = atoms.positions.copy()
            moved[atom, axis] += sign * h
            energies.append(ring_energy(torch.tensor(moved)).item())
        numeric = -(energies[0] - energies[1]) / (2 * h)
        assert forces[atom, axis] == pytest.approx(numeric, rel=1e-6, abs=1e-8)


def test_the_generator_is_deterministic_and_an_exact_ring_is_at_rest():
    a, b = generate_c5(4, seed=1), generate_c5(4, seed=1)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.positions, y.positions)
    assert all(abs(atoms.get_potential_energy()) < 1e-12 for atoms in a)
    distorted = generate_c5(4, seed=1, radial=0.05)
    assert all(atoms.get_potential_energy() > 0 for atoms in distorted)


def test_a_stretch_is_systematic_and_a_random_distortion_is_not():
    """A stretch makes every frame one molecule, turned (equal distance matrices, the first
    ring atom at R + stretch); a random distortion makes every frame another molecule."""

    def distances(atoms):
        return atoms.get_all_distances()

    stretched = generate_c5(3, seed=4, stretch=0.05)
    for atoms in stretched[1:]:
        np.testing.assert_allclose(distances(atoms), distances(stretched[0]), atol=1e-12)
    np.testing.assert_allclose(distances(stretched[0])[0, 1:], [1.15, 1.1, 1.1, 1.1, 1.1])
    assert all(atoms.get_potential_energy() > 0 for atoms in stretched)
    distorted = generate_c5(2, seed=4, radial=0.05)
    assert not np.allclose(distances(distorted[0]), distances(distorted[1]), atol=1e-3)


@pytest.mark.parametrize("width", [0.0025, 0.01, 0.02])
def test_the_leading_order_estimate_of_c_equals_its_monte_carlo(width):
    """The closed form of known answer (c) against a direct draw of the radial shifts: the
    squared correlation of A^2 B (the m = 5 product) with the ring's m = 5 phase."""
    rng = np.random.default_rng(0)
    shifts = width * rng.normal(size=(200_000, 5))
    shifts[:, 0] += 0.05
    ring = np.exp(2j * np.pi * np.arange(5) / 5)
    a, b = shifts @ ring**2, shifts @ ring
    product = a * a * b
    monte_carlo = abs(product.mean()) ** 2 / np.mean(abs(product) ** 2)
    assert recoverable_at_leading_order(0.05, width) == pytest.approx(monte_carlo, abs=0.01)
    assert recoverable_at_leading_order(0.05, 0.0) == 1.0


def center_features(backbone, atoms) -> torch.Tensor:
    data = from_ase(atoms)
    data = ChemicalSpeciesToAtomTypeMapper(
        model_type_names=["C", "H", "O"],
        chemical_species_to_atom_type_map={s: s for s in ("C", "H", "O")},
    )(data)
    data = NeighborListTransform(r_max=5.0)(data)
    batch = AtomicDataDict.batched_from_list([data])
    return backbone.tap(dict(batch))[1][-1].detach()  # the last (only) tap's features


def test_the_centre_features_of_an_exact_ring_do_not_see_its_in_plane_orientation(
    tiny_backbone,
):
    """The symmetry behind the C5 known answers, on a real NequIP backbone (L = 2 < 5): turning
    an exact ring in its plane leaves the centre's features unchanged (only m = 0 survives
    the 5-fold symmetry below l = 5), while the ring atoms' and a distorted ring's change."""
    backbone = load_frozen_backbone(tiny_backbone["ckpt"])
    assert backbone.irreps.lmax < 5
    rotation = random_rotation(np.random.default_rng(0))
    distortion = {"radial": 0.08 * np.arange(5) / 5, "out_of_plane": 0.1 * np.cos(np.arange(5))}
    for angle in (0.3, 1.0, 2.2):
        exact = [center_features(backbone, c5_frame(rotation @ turned(a))) for a in (0.0, angle)]
        assert torch.allclose(exact[0][0], exact[1][0], atol=1e-10)  # the centre
        assert not torch.allclose(exact[0][1], exact[1][1], atol=1e-4)  # a ring atom
        bent = [center_features(backbone, c5_frame(rotation @ turned(a), **distortion))
                for a in (0.0, angle)]  # fmt: skip
        assert not torch.allclose(bent[0][0], bent[1][0], atol=1e-4)
