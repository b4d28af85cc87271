"""Periodic materials: the EMT generator, and the injected signal under periodic boundaries."""

import ase.io
import hydra
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.calculators.emt import EMT
from helpers import CONFIGS, assert_forces_equal_finite_differences
from nequip.data import from_ase
from nequip.data.transforms import NeighborListTransform

from nequip_spectral._keys import injected_energy_key, injected_forces_key
from nequip_spectral.data import SpectralInjection
from nequip_spectral.generators import generate_material
from nequip_spectral.scripts.make_data import make_material

L_ALL = list(range(6))
FIELD = "test_direction"
N_HAT = np.array([0.48, -0.36, 0.8])  # unit
CUTOFF, R_MAX, AMPLITUDE = 4.0, 4.5, 0.07
ALLOY_PROBE = {"centers": ["Au"], "neighbors": ["Cu"], "cutoff": CUTOFF, "amplitude": AMPLITUDE}


def tiny(material="Cu3Au", frames=2, size=1, seed=0):
    """A few frames of a thermalized 4-atom (``size=1``) cell: seconds."""
    return generate_material(
        material, frames, size=size, seed=seed, equilibration_steps=20, stride=5
    )


@pytest.fixture(scope="module")
def alloy():
    return tiny()


def inject(atoms, probe=ALLOY_PROBE, r_max=R_MAX):
    """Neighbor list and injection of one ASE frame, the marked direction fixed (N_HAT)."""
    data = from_ase(atoms)
    data[FIELD] = torch.as_tensor(N_HAT, dtype=torch.float64).view(1, 3)
    data = NeighborListTransform(r_max=r_max)(data)
    probe = {"l_values": L_ALL, "marked_direction": f"field:{FIELD}", **probe}
    return SpectralInjection(probe, r_max=r_max)(data)


def energies(data):
    return torch.cat([data[injected_energy_key(l)].view(1) for l in L_ALL])


def forces(data):
    return torch.stack([data[injected_forces_key(l)] for l in L_ALL])


# ---- the generator


def test_generator_is_deterministic_for_a_seed():
    """Same seed, same frames (positions, energies, forces); another seed, other frames.

    Mutation tried: the Langevin noise from an unseeded ``np.random.default_rng()`` (fails).
    """
    first, again, other = tiny(seed=0), tiny(seed=0), tiny(seed=1)
    for a, b in zip(first, again, strict=True):
        assert np.array_equal(a.positions, b.positions)
        assert a.get_potential_energy() == b.get_potential_energy()
        assert np.array_equal(a.get_forces(), b.get_forces())
    assert not np.allclose(first[-1].positions, other[-1].positions)


def test_frames_are_periodic_cells_with_their_emt_labels():
    """Each frame: the supercell's cell and pbc, positions wrapped into it, and EMT's energy
    and forces at exactly those positions; the thermal motion moved every atom.

    Mutation tried: labels taken before the last MD stride (fails).
    """
    frames = tiny("Cu", frames=2, size=(2, 1, 1))
    for frame in frames:
        assert len(frame) == 8 and frame.get_chemical_formula() == "Cu8"
        assert frame.pbc.all()
        a = frame.cell[0, 0] / 2
        assert np.allclose(frame.cell.array, np.diag([2 * a, a, a]))
        scaled = frame.get_scaled_positions(wrap=False)
        assert (scaled >= 0).all() and (scaled < 1).all()
        reference = frame.copy()
        reference.calc = EMT()
        assert frame.get_potential_energy() == pytest.approx(reference.get_potential_energy())
        np.testing.assert_allclose(frame.get_forces(), reference.get_forces(), atol=1e-10)
        assert np.abs(frame.get_forces()).max() > 1e-2  # displaced from the perfect crystal
    alloy = tiny("Cu3Au", frames=1)[0]
    assert sorted(alloy.get_chemical_symbols()) == ["Au", "Cu", "Cu", "Cu"]


def test_hcp_stacking_is_at_rest_with_twelve_neighbors_and_no_inversion():
    """``structure="hcp"``: the perfect crystal at EMT's lattice constant has no forces (the
    energy minimized), every atom 12 nearest neighbors at ``a``, then 6 at ``a sqrt 2``,
    and the shell around an atom has no center of inversion (unlike fcc's); those 18
    neighbors have no ``l = 2`` moment (sum of ``Y_2``), the next shell has one; an alloy
    cannot be stacked hcp.

    Mutations tried: ``c = a sqrt(3/2)`` instead of ``a sqrt(8/3)``; ``Y_3`` for ``Y_2``
    (both fail).
    """
    from ase.neighborlist import neighbor_list
    from e3nn import o3

    from nequip_spectral.generators.materials import lattice_constant, material_supercell

    crystal = material_supercell("Cu", 2, "hcp")
    a = lattice_constant("Cu", "hcp")
    assert len(crystal) == 32
    crystal.calc = EMT()
    assert np.abs(crystal.get_forces()).max() < 1e-8
    energy = [_hcp_cell_energy(a + da) for da in (-0.01, 0, 0.01)]
    assert energy[1] < min(energy[0], energy[2])
    atom, r, vectors = neighbor_list("idD", crystal, 1.5 * a)
    for i in range(len(crystal)):
        shell = np.sort(r[atom == i])
        np.testing.assert_allclose(shell, [a] * 12 + [a * np.sqrt(2)] * 6, rtol=1e-6)
    first = vectors[(atom == 0) & (r < 1.1 * a)]
    inverted = {tuple(np.round(-v, 6)) for v in first}
    assert inverted != {tuple(np.round(v, 6)) for v in first}
    # docs/method.md: the first two shells carry no l = 2 moment, the third (1.63 a) does
    atom, r, vectors = neighbor_list("idD", crystal, 1.7 * a)
    moment = o3.spherical_harmonics(2, torch.as_tensor(vectors), normalize=True)
    near = torch.as_tensor(r < 1.5 * a)
    for i in range(len(crystal)):
        here = torch.as_tensor(atom == i)
        assert moment[here & near].sum(0).abs().max() < 1e-9
        assert moment[here & ~near].sum(0).abs().max() > 0.1
    with pytest.raises(ValueError, match="one-element"):
        material_supercell("Cu3Au", 1, "hcp")


def test_vacancies_remove_atoms_drawn_from_the_seed():
    """``vacancies=k``: the perfect supercell less ``k`` atoms, the same ones for a seed; the
    sites around a vacancy are no longer at rest (their environment is not the lattice's); as
    many vacancies as atoms are refused, by the function and by the command.

    Mutation tried: the removed atoms drawn from an unseeded generator (fails on the seed).
    """
    from nequip_spectral.generators.materials import material_supercell

    def removed(seed):
        frame = generate_material("Cu", 1, size=2, seed=seed, vacancies=2,
                                  equilibration_steps=0, stride=1)[0]  # fmt: skip
        left = frame.get_scaled_positions()
        sites = material_supercell("Cu", 2).get_scaled_positions()
        offset = (sites[:, None] - left[None] + 0.5) % 1 - 0.5  # site - atom, wrapped
        nearest = np.linalg.norm(offset @ frame.cell.array, axis=-1).min(axis=1)
        assert len(frame) == 30 and (nearest > 0.3).sum() == 2
        return set(np.flatnonzero(nearest > 0.3)), frame

    first, frame = removed(3)
    assert removed(3)[0] == first
    assert any(removed(seed)[0] != first for seed in (4, 5, 6))
    frame.calc = EMT()
    assert np.abs(frame.get_forces()).max() > 0.05  # the vacancies' neighbors feel them
    with pytest.raises(ValueError, match="vacancies"):
        generate_material("Cu", 1, size=1, vacancies=4)
    with pytest.raises(SystemExit):
        make_material(["--material", "Cu", "--size", "1", "--vacancies", "4", "--output", "x"])


def _hcp_cell_energy(a):
    from nequip_spectral.generators.materials import _unit_cell

    cell = _unit_cell("Cu", a, "hcp")
    cell.calc = EMT()
    return cell.get_potential_energy()


def test_command_writes_extxyz_and_shows_every_default(tmp_path, capsys):
    """``nequip-spectral-make-material``: energies, forces, cell and pbc round-trip through
    the file; ``--help`` shows the default of every optional flag; an existing file is
    refused."""
    output = tmp_path / "cu.extxyz"
    argv = ["--material", "Cu", "--size", "2", "1", "1", "--frames", "2", "--stride", "3",
            "--equilibration", "5", "--seed", "4", "--output", str(output)]  # fmt: skip
    make_material(argv)
    written = ase.io.read(output, index=":")
    expected = generate_material("Cu", 2, size=(2, 1, 1), seed=4, stride=3,
                                 equilibration_steps=5)  # fmt: skip
    assert len(written) == 2
    for frame, reference in zip(written, expected, strict=True):
        assert frame.pbc.all() and np.allclose(frame.cell.array, reference.cell.array)
        np.testing.assert_allclose(frame.positions, reference.positions, atol=1e-8)
        assert frame.get_potential_energy() == pytest.approx(reference.get_potential_energy())
        np.testing.assert_allclose(frame.get_forces(), reference.get_forces(), atol=1e-8)

    with pytest.raises(SystemExit):
        make_material(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    flags = ["--frames", "--seed", "--material", "--size", "--structure", "--vacancies",
             "--temperature", "--timestep", "--stride", "--equilibration",
             "--friction"]  # fmt: skip
    for flag, following in zip(flags, [*flags[1:], None], strict=True):
        start = text.index(f"{flag} ", text.index("options:"))
        block = text[start : text.index(f"{following} ", start) if following else None]
        assert "(default: " in block, flag
    with pytest.raises(SystemExit):
        make_material(argv)  # the file exists now
    assert "exists" in capsys.readouterr().err


# ---- the injected signal under periodic boundaries


def test_unchanged_when_an_atom_moves_by_a_lattice_vector(alloy):
    """Moving a neighbor, or the center, by a lattice vector (out of the cell) changes neither
    the injected energies nor the forces.

    Mutation tried: the edge vectors without their cell shift, ``pos[j] - pos[i]`` (fails).
    """
    atoms = alloy[0]
    reference = inject(atoms)
    assert (energies(reference).abs() > 1e-6).all()
    for atom, shift in ((1, [1, 0, -2]), (0, [0, -1, 1])):  # a Cu neighbor, the Au center
        moved = atoms.copy()
        moved.positions[atom] += np.array(shift) @ atoms.cell.array
        shifted = inject(moved)
        assert torch.allclose(energies(shifted), energies(reference), rtol=1e-10, atol=1e-12)
        assert torch.allclose(forces(shifted), forces(reference), atol=1e-10)


def test_replicated_cell_scales_the_signal_by_the_copies(alloy):
    """The cell repeated (2, 1, 1) and (1, 2, 2): the signal times the number of copies, the
    forces of every copy of an atom those of the atom.

    Mutation tried: the edge vectors without their cell shift (fails).
    """
    atoms = alloy[1]
    reference = inject(atoms)
    for repeats in ((2, 1, 1), (1, 2, 2)):
        copies = int(np.prod(repeats))
        bigger = inject(atoms.repeat(repeats))
        assert torch.allclose(energies(bigger), copies * energies(reference), rtol=1e-10)
        per_copy = forces(bigger).view(len(L_ALL), copies, len(atoms), 3)
        for c in range(copies):
            assert torch.allclose(per_copy[:, c], forces(reference), atol=1e-10)


def test_forces_equal_finite_differences_under_periodic_boundaries(alloy):
    """Every atom, every axis of a thermal 4-atom Cu3Au cell, float64, central differences.

    Mutation tried: the center's reaction dropped (only ``d s / d r_j`` accumulated) (fails).
    """
    atoms = alloy[0]
    analytic = forces(inject(atoms))
    assert_forces_equal_finite_differences(lambda moved: energies(inject(moved)), atoms, analytic)


# by hand: NequIP's polynomial envelope (p = 6) and sqrt(2l+1) P_l(n . rhat), numpy's Legendre
def pair_term_by_hand(v, l):
    r = np.linalg.norm(v)
    rhat, u = v / r, r / CUTOFF
    x = N_HAT @ rhat
    f = 1 - 28 * u**6 + 48 * u**7 - 21 * u**8
    df = -168 / CUTOFF * u**5 * (1 - u) ** 2
    P = np.polynomial.legendre.Legendre.basis(l)
    value = np.sqrt(2 * l + 1) * f * P(x)
    gradient = np.sqrt(2 * l + 1) * (df * P(x) * rhat + f * P.deriv()(x) * (N_HAT - x * rhat) / r)
    return value, gradient


def images_by_hand(atoms, i, j):
    """Every vector from atom ``i`` to a periodic image of atom ``j`` shorter than the cutoff."""
    cell = atoms.cell.array
    shifts = np.array(np.meshgrid(*[range(-4, 5)] * 3, indexing="ij")).reshape(3, -1).T
    vectors = atoms.positions[j] + shifts @ cell - atoms.positions[i]
    return vectors[np.linalg.norm(vectors, axis=1) < CUTOFF]


def test_every_periodic_image_of_a_neighbor_counted_once():
    """One Au center and one Cu in a small skewed cell: the Cu's images inside the cutoff are
    eight, and the injected energy and forces equal the sum over those images written out.

    Mutations tried: each image counted twice (the pairs' edges repeated) (fails); one edge
    per (center, neighbor), images dropped (fails); the cell shift dropped (fails).
    """
    cell = np.array([[2.9, 0.0, 0.0], [0.3, 3.0, 0.0], [0.2, -0.1, 3.1]])
    atoms = Atoms("AuCu", scaled_positions=[[0.02, 0.05, 0.01], [0.55, 0.47, 0.52]],
                  cell=cell, pbc=True)  # fmt: skip
    vectors = images_by_hand(atoms, 0, 1)
    assert len(vectors) == 8  # the frame is as designed: several images of one neighbor
    data = inject(atoms)
    for l in L_ALL:
        terms = [pair_term_by_hand(v, l) for v in vectors]
        energy = AMPLITUDE * sum(value for value, _ in terms)
        gradient = sum(g for _, g in terms)
        assert abs(energy) > 1e-3 * AMPLITUDE, l
        assert data[injected_energy_key(l)].item() == pytest.approx(energy, rel=1e-10)
        expected = AMPLITUDE * np.stack([gradient, -gradient])  # on Au (center), on Cu
        np.testing.assert_allclose(data[injected_forces_key(l)].numpy(), expected,
                                   rtol=1e-9, atol=1e-12)  # fmt: skip


# ---- the example configs


def test_alloy_data_group_and_backbone_config_read_the_generator_file(tmp_path):
    """``data=alloy`` on the probe config and ``alloy_backbone.yaml`` compose, read a file of
    the generator (type names [Au, Cu]) and, for the probe, inject the signal around Au."""
    path = tmp_path / "cu3au.extxyz"
    ase.io.write(path, tiny(frames=10), format="extxyz")
    with hydra.initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        probe = hydra.compose("aspirin_probe.yaml", overrides=[
            "data=alloy", f"dataset_file={path}", "spectral_probe.backbones=[x]"])  # fmt: skip
        backbone = hydra.compose("alloy_backbone.yaml", overrides=[f"dataset_file={path}"])
    assert list(probe.model_type_names) == list(backbone.model_type_names) == ["Au", "Cu"]
    assert probe.cutoff_radius == backbone.cutoff_radius
    assert probe.spectral_probe.centers == ["Au"] and probe.spectral_probe.neighbors == ["Cu"]
    assert probe.spectral_probe.cutoff <= probe.cutoff_radius
    assert backbone.data.split_dataset.file_path == str(path)
    datamodule = hydra.utils.instantiate(probe.data, _recursive_=False)
    datamodule.prepare_data()
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["pbc"].all()
    assert (batch[injected_energy_key(1)].abs() > 0).all()
