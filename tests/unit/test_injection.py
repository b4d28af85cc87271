import numpy as np
import pytest
import torch
from ase import Atoms
from e3nn import o3
from nequip.data import AtomicDataDict, from_ase
from nequip.data.dataset import ASEDataset
from nequip.data.transforms import NeighborListTransform

from nequip_spectral._keys import (
    MARKED_DIRECTION_KEY,
    injected_energy_key,
    injected_forces_key,
    null_energy_key,
    null_forces_key,
)
from nequip_spectral.data import BUNDLED_ASPIRIN, SpectralInjection

L_ALL = list(range(9))
FIELD = "test_direction"


def inject(atoms, direction=None, r_max=5.0, **probe):
    """Apply the neighbor list and the injection to one ASE frame."""
    probe = {"l_values": L_ALL, **probe}
    data = from_ase(atoms)
    if direction is not None:
        probe["marked_direction"] = f"field:{FIELD}"
        data[FIELD] = torch.as_tensor(direction, dtype=torch.float64).view(1, 3)
    data = NeighborListTransform(r_max=r_max)(data)
    return SpectralInjection(probe, r_max=r_max)(data)


def energies(data):
    return torch.cat([data[injected_energy_key(l)].view(1) for l in L_ALL])


def forces(data):
    return torch.stack([data[injected_forces_key(l)] for l in L_ALL])


DIRECTION = np.array([0.48, -0.36, 0.8])


def test_forces_equal_finite_differences(aspirin_atoms):
    atoms = aspirin_atoms[0]
    analytic = forces(inject(atoms, DIRECTION))
    h = 1e-5
    for atom in [0, 6, 11, 13]:  # C, H, O, H (hydroxyl)
        for axis in range(3):
            plus, minus = atoms.copy(), atoms.copy()
            plus.positions[atom, axis] += h
            minus.positions[atom, axis] -= h
            numeric = -(energies(inject(plus, DIRECTION)) - energies(inject(minus, DIRECTION))) / (
                2 * h
            )
            assert torch.allclose(
                analytic[:, atom, axis], numeric, rtol=1e-6, atol=1e-6 * analytic.abs().max()
            ), (atom, axis)


def test_invariant_under_rotation_translation_permutation(aspirin_atoms):
    atoms = aspirin_atoms[1]
    reference = inject(atoms, DIRECTION)
    torch.manual_seed(3)
    R = o3.rand_matrix().numpy()

    moved = atoms.copy()
    moved.positions = atoms.positions @ R.T + np.array([1.0, -2.0, 0.5])
    rotated = inject(moved, R @ DIRECTION)
    assert torch.allclose(energies(rotated), energies(reference), atol=1e-10)
    R_t = torch.as_tensor(R)
    assert torch.allclose(forces(rotated), forces(reference) @ R_t.T, atol=1e-10)

    perm = np.random.default_rng(0).permutation(len(atoms))
    permuted = inject(atoms[perm], DIRECTION)
    assert torch.allclose(energies(permuted), energies(reference), atol=1e-10)
    assert torch.allclose(forces(permuted), forces(reference)[:, perm], atol=1e-10)


def test_every_l_nonzero_on_aspirin_and_labels_untouched(aspirin_atoms):
    for atoms in aspirin_atoms:
        data = inject(atoms)
        assert (energies(data).abs() > 1e-4).all(), energies(data)
        assert (forces(data).abs().amax(dim=(1, 2)) > 1e-3).all()
        assert torch.allclose(
            data[AtomicDataDict.FORCE_KEY],
            torch.as_tensor(atoms.get_forces(), dtype=torch.float64),
        )
        assert data[AtomicDataDict.TOTAL_ENERGY_KEY].item() == atoms.get_potential_energy()


def test_overlapping_species_would_cancel_odd_l():
    """Why centers and neighbors must be disjoint: counting (i, j) and (j, i) kills odd l."""
    from nequip_spectral.theory import pair_signal

    v = torch.tensor([[0.3, 1.0, -0.4]], dtype=torch.float64)
    n = torch.tensor([0.0, 0.6, 0.8], dtype=torch.float64)
    both = pair_signal(torch.cat([v, -v]), n, L_ALL, 4.0)[0].sum(0)
    assert torch.allclose(both[1::2], torch.zeros(4, dtype=torch.float64), atol=1e-12)
    assert (both[0::2].abs() > 1e-3).all()


def test_random_direction_same_across_epochs_workers_reruns():
    def first_frames(probe):
        transforms = [NeighborListTransform(r_max=4.0), SpectralInjection(probe)]
        dataset = ASEDataset(file_path=str(BUNDLED_ASPIRIN), transforms=transforms)
        return torch.utils.data.Subset(dataset, range(12))

    probe = {"l_values": [1, 5]}
    dataset = first_frames(probe)
    first = torch.cat([frame[MARKED_DIRECTION_KEY] for frame in dataset])
    assert torch.allclose(first.norm(dim=1), torch.ones(12, dtype=first.dtype))
    assert (first[1:] - first[:-1]).norm(dim=1).min() > 1e-3  # frames differ

    loader = torch.utils.data.DataLoader(
        first_frames(probe),  # a rerun: new dataset, new transform
        batch_size=4,
        num_workers=2,
        collate_fn=AtomicDataDict.batched_from_list,
    )
    for _epoch in range(2):
        seen = torch.cat([batch[MARKED_DIRECTION_KEY] for batch in loader])
        assert torch.equal(seen, first)
    other_seed = first_frames({**probe, "seed": 1})
    assert not torch.allclose(other_seed[0][MARKED_DIRECTION_KEY], first[:1])


def test_smooth_when_a_neighbor_crosses_the_cutoff():
    def signal_at(distance):
        atoms = Atoms("CH", positions=[[0, 0, 0], [distance, 0.3 * distance, 0]])
        return energies(inject(atoms, DIRECTION, cutoff=2.0, r_max=2.5))

    inside, outside = signal_at(2.0 / np.hypot(1, 0.3) - 1e-4), signal_at(2.0 / np.hypot(1, 0.3))
    assert torch.allclose(inside, torch.zeros_like(inside), atol=1e-12)
    assert torch.equal(outside, torch.zeros_like(outside))
    assert (signal_at(1.2).abs() > 1e-3).all()


def test_periodic_pair_across_the_cell_boundary():
    """A C-H pair that only exists through the periodic image gives the molecule's signal."""
    cell = np.diag([6.0, 6.0, 6.0])
    periodic = Atoms("CH", positions=[[0.2, 3.0, 3.0], [5.3, 3.4, 2.9]], cell=cell, pbc=True)
    molecule = Atoms("CH", positions=[[0.2, 3.0, 3.0], [-0.7, 3.4, 2.9]])
    reference = inject(molecule, DIRECTION, r_max=3.0, cutoff=3.0)
    wrapped = inject(periodic, DIRECTION, r_max=3.0, cutoff=3.0)
    assert (energies(reference).abs() > 1e-4).all()
    assert torch.allclose(energies(wrapped), energies(reference), atol=1e-12)
    assert torch.allclose(forces(wrapped), forces(reference), atol=1e-12)


def test_bad_frames_are_named(aspirin_atoms):
    broken = aspirin_atoms[0].copy()
    broken.positions[3, 1] = np.nan
    with pytest.raises(ValueError, match="non-finite pos in the frame C9H8O4"):
        inject(broken)
    with pytest.raises(KeyError, match="field 'test_direction' is not in the data"):
        SpectralInjection({"marked_direction": f"field:{FIELD}"})(
            NeighborListTransform(r_max=4.0)(from_ase(aspirin_atoms[0]))
        )
    with pytest.raises(ValueError, match="must be a finite, nonzero 3-vector"):
        inject(aspirin_atoms[0], [0.0, 0.0, 0.0])
    with pytest.raises(KeyError, match=r"after nequip\.data\.transforms\.NeighborListTransform"):
        SpectralInjection({})(from_ase(aspirin_atoms[0]))


def test_shuffled_direction_is_another_than_the_injected_one_for_every_frame(aspirin_atoms):
    """The null control: the same injected signal as ``random``, and a direction for the SPN
    that is not the injected one, the same on every call."""
    for atoms in aspirin_atoms:
        random, shuffled, again = (
            inject(atoms, marked_direction=mode) for mode in ("random", "shuffled", "shuffled")
        )
        assert torch.equal(energies(shuffled), energies(random))
        assert torch.equal(forces(shuffled), forces(random))
        read, injected = shuffled[MARKED_DIRECTION_KEY], random[MARKED_DIRECTION_KEY]
        assert torch.equal(read, again[MARKED_DIRECTION_KEY])
        assert read.norm() == pytest.approx(1.0) and abs((read * injected).sum()) < 0.99
        # what the SPN reads is not the direction of the injected signal
        along_read = inject(atoms, direction=read.view(-1).numpy())
        assert not torch.allclose(energies(along_read)[1:], energies(random)[1:])


def test_the_null_heads_signal_is_along_another_direction_for_every_frame(aspirin_atoms):
    """The null heads' fields are the signal of every ``l > 0`` along the frame's null
    direction, which is not the marked one (so they differ from the injected fields) and is
    another for every frame."""
    injection = SpectralInjection({"l_values": L_ALL})
    directions = []
    for atoms in aspirin_atoms:
        data = inject(atoms)
        null = injection.null_direction(data)
        assert null.norm() == pytest.approx(1.0)
        assert abs(null @ data[MARKED_DIRECTION_KEY].view(-1)) < 0.99
        along_null = inject(atoms, direction=null.numpy())
        null_energies = torch.cat([data[null_energy_key(l)].view(1) for l in L_ALL[1:]])
        null_forces = torch.stack([data[null_forces_key(l)] for l in L_ALL[1:]])
        assert torch.allclose(null_energies, energies(along_null)[1:], rtol=1e-12, atol=0)
        assert torch.allclose(null_forces, forces(along_null)[1:], rtol=1e-12, atol=1e-15)
        assert not torch.allclose(null_energies, energies(data)[1:], rtol=0.01)
        directions.append(null)
    directions = torch.stack(directions)
    distances = (directions[:, None] - directions[None]).norm(dim=-1)
    assert distances.add(torch.eye(len(directions))).min() > 1e-3
