"""One-element systems: ``spectral_probe.center_fraction`` marks a random subset of centers."""

import types

import numpy as np
import pytest
import torch
from ase import Atoms
from e3nn import o3
from helpers import assert_forces_equal_finite_differences
from nequip.data import AtomicDataDict, from_ase
from nequip.data.transforms import ChemicalSpeciesToAtomTypeMapper, NeighborListTransform

from nequip_spectral._keys import (
    MARKED_CENTER_KEY,
    injected_energy_key,
    injected_forces_key,
)
from nequip_spectral.config import SpectralProbeConfig, SpectralProbeError
from nequip_spectral.data import SpectralInjection, frames_from_ase
from nequip_spectral.generators import generate_material
from nequip_spectral.heads import FORCE_FIT, Head
from nequip_spectral.nn.probe import SpectralProbeModel
from nequip_spectral.nn.tap import FrozenBackbone

L_ALL = list(range(6))
ODD = [1, 3, 5]
FIELD = "test_direction"
N_HAT = np.array([0.48, -0.36, 0.8])  # unit
CUTOFF, R_MAX, AMPLITUDE = 4.0, 4.5, 0.07
PROBE = {"l_values": L_ALL, "centers": ["Cu"], "neighbors": ["Cu"], "center_fraction": 0.5,
         "readout": "centers", "cutoff": CUTOFF, "amplitude": AMPLITUDE}  # fmt: skip


@pytest.fixture(scope="module")
def copper():
    """Three thermal frames of an 8-atom fcc Cu cell (two cubic cells), EMT at 500 K."""
    return generate_material("Cu", 3, size=(2, 1, 1), seed=0, equilibration_steps=20, stride=5)


def inject(atoms, injection=None, direction=None):
    """Neighbor list and injection of one frame (the marked direction a field if given)."""
    data = from_ase(atoms)
    if direction is not None:
        data[FIELD] = torch.as_tensor(direction, dtype=torch.float64).view(1, 3)
    data = NeighborListTransform(r_max=R_MAX)(data)
    if injection is None:
        probe = PROBE if direction is None else {**PROBE, "marked_direction": f"field:{FIELD}"}
        injection = SpectralInjection(probe, r_max=R_MAX)
    return injection(data)


def energies(data):
    return torch.cat([data[injected_energy_key(l)].view(1) for l in L_ALL])


def forces(data):
    return torch.stack([data[injected_forces_key(l)] for l in L_ALL])


def marked(data):
    return data[MARKED_CENTER_KEY].view(-1).bool()


def test_odd_l_survive_with_a_marked_half(copper):
    """A one-element cell, centers and neighbors both Cu: every odd l is nonzero, while the
    same cell with every Cu a center and a neighbor (each pair counted both ways) has none.

    Mutation tried: ``center_fraction`` ignored by the injection (every Cu a center and a
    neighbor) (fails).
    """
    for atoms in copper:
        data = inject(atoms)
        assert marked(data).sum() == 4
        assert (energies(data)[ODD].abs() > 1e-4).all(), energies(data)
        assert (forces(data)[ODD].abs().amax(dim=(1, 2)) > 1e-3).all()
    # what center_fraction avoids: every Cu a center and a neighbor, odd l cancel exactly
    values = _signal_by_hand(copper[0], np.ones(8, bool), np.ones(8, bool))
    assert np.allclose(values[ODD], 0, atol=1e-12) and (np.abs(values[0::2]) > 1e-3).all()


def _signal_by_hand(atoms, centers, neighbors):
    """eps * s_l, summed over every center, every neighbor atom other than itself and all
    their periodic images inside the cutoff (N_HAT the marked direction)."""
    cell = atoms.cell.array
    shifts = np.array(np.meshgrid(*[range(-4, 5)] * 3, indexing="ij")).reshape(3, -1).T
    total = np.zeros(len(L_ALL))
    for i in np.flatnonzero(centers):
        for j in np.flatnonzero(neighbors):
            vectors = atoms.positions[j] + shifts @ cell - atoms.positions[i]
            r = np.linalg.norm(vectors, axis=1)
            keep = (r < CUTOFF) & (r > 1e-8)  # not the atom itself
            u, x = r[keep] / CUTOFF, vectors[keep] @ N_HAT / r[keep]
            f = 1 - 28 * u**6 + 48 * u**7 - 21 * u**8
            for k, l in enumerate(L_ALL):
                P = np.polynomial.legendre.Legendre.basis(l)
                total[k] += np.sqrt(2 * l + 1) * (f * P(x)).sum()
    return AMPLITUDE * total


def test_signal_is_the_sum_over_marked_centers_of_all_their_neighbors(copper):
    """The injected energy equals the sum written out by hand over the marked centers, each
    with every Cu neighbor (marked ones too) and every periodic image, for even and odd l: a
    sum of per-center terms, which heads reading the marked centers can represent.

    Mutation tried: marked atoms left out of the neighbors (``& ~marked``, the rule before):
    the signal then lacks the marked-marked pairs, which depend on which neighbors are
    marked, something no head reading a center's features can see (fails).
    """
    for atoms in copper[:2]:
        data = inject(atoms, direction=N_HAT)
        mask = marked(data).numpy()
        expected = _signal_by_hand(atoms, mask, np.ones(len(atoms), bool))
        np.testing.assert_allclose(energies(data).numpy(), expected, rtol=1e-10)


def test_forces_equal_finite_differences_with_the_subset_held(copper):
    """Every atom, every axis, float64 central differences, the marked subset held fixed (as
    the marked direction is: both are drawn from the frame's positions).

    Mutation tried: the marked centers' reaction dropped (only ``d s / d r_j``) (fails).
    """
    atoms = copper[0]
    probe = {**PROBE, "marked_direction": f"field:{FIELD}"}
    reference = inject(atoms, direction=N_HAT)
    subset = marked(reference)
    injection = SpectralInjection(probe, r_max=R_MAX)
    injection.marked_centers = lambda data: subset
    analytic = forces(inject(atoms, injection, N_HAT))
    assert torch.equal(analytic, forces(reference))
    assert_forces_equal_finite_differences(
        lambda moved: energies(inject(moved, injection, N_HAT)), atoms, analytic
    )


def test_subset_is_seeded_by_the_frame_and_stored(copper):
    """The marked subset: a registered (num_atoms, 1) field, the same on every call (a new
    transform, a new frame: another epoch, worker, rank or rerun), another for another frame
    or another probe seed.

    Mutation tried: the subset from an unseeded generator (``torch.randperm(n)``) (fails).
    """
    first = [inject(atoms) for atoms in copper]
    again = [inject(atoms) for atoms in copper]
    for a, b in zip(first, again, strict=True):
        field = a[MARKED_CENTER_KEY]
        assert field.shape == (8, 1) and field.dtype == torch.long
        assert set(field.view(-1).tolist()) == {0, 1}
        assert torch.equal(field, b[MARKED_CENTER_KEY])
        assert torch.equal(energies(a), energies(b))
    subsets = {tuple(marked(data).tolist()) for data in first}
    assert len(subsets) == len(copper)  # different positions, different subsets
    reseeded = inject(copper[0], SpectralInjection({**PROBE, "seed": 1}, r_max=R_MAX))
    assert not torch.equal(marked(reseeded), marked(first[0]))
    # registered: batching concatenates it as a per-atom field
    batch = AtomicDataDict.batched_from_list(first)
    assert torch.equal(batch[MARKED_CENTER_KEY], torch.cat([d[MARKED_CENTER_KEY] for d in first]))
    # without center_fraction nothing is stored: the data of existing runs is unchanged
    atoms = copper[0].copy()
    atoms.symbols[7] = "H"
    plain = SpectralInjection({"centers": ["Cu"], "neighbors": ["H"]})
    assert MARKED_CENTER_KEY not in inject(atoms, plain)


@pytest.mark.parametrize("fraction, expected", [(0.5, 4), (0.01, 1), (0.99, 7), (0.3, 2)])
def test_marked_count_at_least_one_and_not_all(copper, fraction, expected):
    """``F n`` rounded, at least one, at most ``n - 1`` (some neighbors remain)."""
    injection = SpectralInjection({**PROBE, "center_fraction": fraction})
    assert marked(inject(copper[0], injection)).sum() == expected


@pytest.mark.parametrize(
    "n, fraction, expected",
    [(1, 0.5, 1), (2, 0.9, 1), (3, 0.5, 2), (5, 0.5, 3), (6, 0.7, 4), (10, 0.25, 3),
     (12, 0.45, 5), (9, 0.05, 1), (20, 0.33, 7)],
)  # fmt: skip
def test_marked_count_is_the_fraction_rounded_half_up_for_any_count(n, fraction, expected):
    """Of ``n`` center-species atoms (two atoms of another species beside them, never marked)
    ``F n`` are marked, rounded half up (1.5 -> 2, 2.5 -> 3, 4.2 -> 4), at least one and for
    ``n >= 2`` at most ``n - 1``."""
    positions = np.random.default_rng(n).uniform(0, 10, size=(n + 2, 3))
    atoms = Atoms(["Cu"] * n + ["Au"] * 2, positions=positions)
    injection = SpectralInjection({**PROBE, "center_fraction": fraction})
    chosen = injection.marked_centers(from_ase(atoms))
    assert chosen.sum() == expected and not chosen[n:].any()


def test_overlapping_species_need_center_fraction():
    """Overlapping centers and neighbors without ``center_fraction``: an error that names the
    key; with it, accepted."""
    block = {"centers": ["Cu"], "neighbors": ["Cu"]}
    with pytest.raises(SpectralProbeError, match=r"spectral_probe\.neighbors:") as error:
        SpectralInjection(block)
    assert "spectral_probe.center_fraction" in str(error.value)
    assert "disjoint" in str(error.value)
    one_element = {**block, "center_fraction": 0.5, "readout": "centers"}
    assert SpectralProbeConfig.from_block(one_element).center_fraction == 0.5


def stub_probe_model(probe, type_names):
    """A probe model on a stub backbone: enough for ``read()``, which reads no backbone."""
    first = types.SimpleNamespace(irreps_in={AtomicDataDict.POSITIONS_KEY: "1o"})
    backbone = FrozenBackbone(path="stub", model=torch.nn.Identity(), before_tap=(first,),
                              from_tap=(), taps=("stub",),
                              tap_irreps=(o3.Irreps("2x0e+2x1o"),))  # fmt: skip
    return SpectralProbeModel([backbone], probe, type_names)


def test_readout_over_the_marked_centers_only(copper):
    """``readout: centers`` with ``center_fraction``: ``SpectralProbeModel.read()`` (a real
    probe model, its backbone a stub) sums over each frame's marked centers, not over every
    Cu; without ``center_fraction`` over every atom of the center species.

    Mutation tried: ``center_fraction`` ignored in the readout (every Cu) (fails).
    """
    mapper = ChemicalSpeciesToAtomTypeMapper(
        model_type_names=["Cu"], chemical_species_to_atom_type_map={"Cu": "Cu"}
    )
    probe = {**PROBE, "readout": "centers"}
    transforms = [mapper, NeighborListTransform(r_max=R_MAX), SpectralInjection(probe)]
    batch = AtomicDataDict.batched_from_list(frames_from_ase(copper, transforms))
    readout = stub_probe_model(probe, ["Cu"]).read(batch, torch.float64).readout
    assert readout.shape == (24, 1) and readout.dtype == torch.float64
    assert torch.equal(readout, batch[MARKED_CENTER_KEY].to(torch.float64))
    assert readout.view(3, 8).sum(1).tolist() == [4.0, 4.0, 4.0]

    alloy = {**probe, "centers": ["Au"], "neighbors": ["Cu"], "center_fraction": None}
    mapper = ChemicalSpeciesToAtomTypeMapper(
        model_type_names=["Au", "Cu"], chemical_species_to_atom_type_map={"Au": "Au", "Cu": "Cu"}
    )
    atoms = copper[0].copy()
    atoms.symbols[[0, 5]] = "Au"
    transforms = [mapper, NeighborListTransform(r_max=R_MAX), SpectralInjection(alloy)]
    batch = AtomicDataDict.batched_from_list(frames_from_ase([atoms], transforms))
    readout = stub_probe_model(alloy, ["Au", "Cu"]).read(batch, torch.float64).readout
    assert readout.view(-1).tolist() == [1.0, 0, 0, 0, 0, 1.0, 0, 0]


# ---- what a cubic site lets a head make at the ideal lattice


@pytest.fixture(scope="module")
def cubic_site_probe():
    """A closed-form probe on an untrained float64 ``l_max = 2`` NequIP backbone for Cu; the
    force heads' weights random on the features read along ``Y_lam(n)`` with ``lam > L``
    (products of two ``l > 0`` channels), zero on the others."""
    from nequip.model import NequIPGNNModel

    from nequip_spectral.nn.tap import freeze_and_tap

    backbone = NequIPGNNModel(
        seed=0, model_dtype="float64", type_names=["Cu"], r_max=R_MAX, l_max=2, num_layers=2,
        num_features=4, radial_mlp_depth=1, radial_mlp_width=8, avg_num_neighbors=12.0,
        per_type_energy_shifts={"Cu": 0.0}, per_type_energy_scales={"Cu": 1.0},
    )  # fmt: skip
    probe = {**PROBE, "l_values": [1, 2, 3, 4], "solver": "closed_form", "degree": 2}
    model = SpectralProbeModel([freeze_and_tap(backbone)], probe, ["Cu"]).to(torch.float64)
    heads = model.heads[FORCE_FIT][0]
    terms = heads.features.terms
    lam = torch.repeat_interleave(torch.tensor([t.lam for t in terms]),
                                  torch.tensor([t.count for t in terms]))  # fmt: skip
    assert len(lam) == heads.features.num_features and lam.max() == 4
    with torch.no_grad():
        generator = torch.Generator().manual_seed(0)
        heads.weights.copy_(torch.randn(heads.weights.shape, generator=generator))
        heads.weights[lam <= 2] = 0
    return model, probe


def test_cubic_sites_hold_no_force_above_L_at_the_ideal_lattice(cubic_site_probe, copper):
    """At a site of cubic symmetry an equivariant feature of ``l = 1, 2`` is zero, so a head's
    features read along ``Y_lam(n)`` with ``lam > L`` (products of two of them) have zero
    gradient at the perfect fcc lattice: there a head makes forces of ``l <= L`` only,
    whatever its weights, while the injected ``l = 3, 4`` forces of a marked half are not
    zero. Thermal distortions (an fcc frame at 500 K) or sites without cubic symmetry (the
    perfect hcp lattice) give those features gradients. (``docs/method.md``, one-element
    systems.)

    Mutation tried: the fcc cell's positions rattled by 0.05 A (fails).
    """
    from nequip_spectral.generators.materials import material_supercell

    model, probe = cubic_site_probe
    mapper = ChemicalSpeciesToAtomTypeMapper(
        model_type_names=["Cu"], chemical_species_to_atom_type_map={"Cu": "Cu"}
    )
    transforms = [mapper, NeighborListTransform(r_max=R_MAX), SpectralInjection(probe)]

    def largest_forces(atoms):  # the largest head and injected force component, l = 3, 4
        (data,) = frames_from_ase([atoms], transforms)
        out = model(AtomicDataDict.batched_from_list([data]))
        head = [out[Head(0, FORCE_FIT, l).output_key("forces")].abs().max() for l in (3, 4)]
        injected = [data[injected_forces_key(l)].abs().max() for l in (3, 4)]
        return torch.stack(head), torch.stack(injected)

    ideal, injected = largest_forces(material_supercell("Cu", 2))
    thermal, _ = largest_forces(copper[0])
    hcp, _ = largest_forces(material_supercell("Cu", 1, "hcp"))
    assert (injected > 1e-3).all(), injected
    assert (ideal < 1e-10 * thermal).all(), (ideal, thermal)  # round-off: 1e-19 against 1e-4
    assert (hcp > 1e-4 * thermal).all(), (hcp, thermal)  # 1e-6 against 1e-4 (untrained)
