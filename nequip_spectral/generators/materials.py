"""Periodic metals and an alloy with EMT energies and forces: your own model, your own material.

Short Langevin molecular dynamics of a supercell under periodic boundaries with ASE's
effective-medium-theory calculator (``ase.calculators.emt``, no extra dependency), written
as extxyz frames with energies (eV), forces (eV/A), cell and pbc. The materials are the fcc
metals of EMT's parameter set (``Al Cu Ag Au Ni Pd Pt``), which may also be stacked hcp
(``structure="hcp"``: sites without inversion or cubic symmetry, ideal ``c/a``), and the L1_2
alloy ``Cu3Au`` (Au on the cube corners, Cu on the face centers). The lattice constant is
EMT's own equilibrium (the unit cell's energy minimized), so the dynamics starts unstrained.
Deterministic for a given seed on a given machine. For example (108 atoms, 500 K)::

    nequip-spectral-make-material --material Cu3Au --size 3 --frames 1000 \\
        --output cu3au_emt_500K.extxyz
"""

from collections.abc import Sequence

import numpy as np
from ase import Atoms

from .md import langevin_frames

FCC_METALS = ("Al", "Cu", "Ag", "Au", "Ni", "Pd", "Pt")
ALLOYS = ("Cu3Au",)
MATERIALS = FCC_METALS + ALLOYS
STRUCTURES = ("fcc", "hcp")


def _unit_cell(material: str, a: float, structure: str = "fcc") -> Atoms:
    """The 4-atom cell of ``material`` with lattice constant ``a``: the conventional cubic
    cell, or for ``hcp`` the orthorhombic cell of the ideal hcp stacking (``c = a sqrt(8/3)``)."""
    if structure not in STRUCTURES:
        raise ValueError(f"unknown structure {structure!r}; choose one of {list(STRUCTURES)}")
    if structure == "hcp":
        if material not in FCC_METALS:
            raise ValueError(f"structure 'hcp' is for one-element metals {list(FCC_METALS)}")
        from ase.build import bulk

        return bulk(material, "hcp", a=a, c=a * np.sqrt(8 / 3), orthorhombic=True)
    scaled = [[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]]
    if material in FCC_METALS:
        symbols = [material] * 4
    elif material == "Cu3Au":
        symbols = ["Au", "Cu", "Cu", "Cu"]  # L1_2: Au on the corners, Cu on the faces
    else:
        raise ValueError(f"unknown material {material!r}; choose one of {list(MATERIALS)}")
    return Atoms(symbols, scaled_positions=scaled, cell=[a, a, a], pbc=True)


def lattice_constant(material: str, structure: str = "fcc") -> float:
    """EMT's equilibrium lattice constant ``a`` of ``material``'s unit cell, in A."""
    from ase.calculators.emt import EMT
    from ase.data import atomic_numbers, reference_states
    from scipy.optimize import minimize_scalar

    symbols = _unit_cell(material, 1.0, structure).get_chemical_symbols()
    # Vegard's law on the experimental fcc lattice constants: the bracket's middle
    guess = np.mean([reference_states[atomic_numbers[s]]["a"] for s in symbols])
    if structure == "hcp":  # the same nearest-neighbor distance
        guess /= np.sqrt(2)

    def energy(a):
        atoms = _unit_cell(material, a, structure)
        atoms.calc = EMT()
        return atoms.get_potential_energy()

    result = minimize_scalar(
        energy, bounds=(0.9 * guess, 1.1 * guess), method="bounded", options={"xatol": 1e-6}
    )
    return float(result.x)


def material_supercell(
    material: str, size: int | Sequence[int] = 3, structure: str = "fcc"
) -> Atoms:
    """The perfect crystal: the 4-atom unit cell at EMT's lattice constant, repeated ``size``
    times (one number for every axis, or three)."""
    repeats = (size,) * 3 if isinstance(size, int) else tuple(size)
    if len(repeats) != 3 or any(int(n) != n or n < 1 for n in repeats):
        raise ValueError(f"size must be a positive integer or three of them, got {size!r}")
    return _unit_cell(material, lattice_constant(material, structure), structure).repeat(repeats)


def generate_material(
    material: str,
    n_frames: int,
    size: int | Sequence[int] = 3,
    seed: int = 0,
    temperature_K: float = 500.0,
    timestep_fs: float = 2.0,
    stride: int = 10,
    equilibration_steps: int = 500,
    friction_per_fs: float = 0.01,
    structure: str = "fcc",
    vacancies: int = 0,
) -> list[Atoms]:
    """Run Langevin dynamics of a periodic supercell and return ``n_frames`` frames.

    Each frame has the supercell's cell and pbc, the positions wrapped into the cell, and
    EMT's energy and forces as a single-point calculator (written by ``ase.io.write``).

    Args:
        material: one of :data:`MATERIALS`
        n_frames: frames to record
        size: repeats of the 4-atom cubic cell, one number or three
        seed: seeds the initial velocities and the Langevin noise
        temperature_K: thermostat temperature
        timestep_fs: integration step
        stride: steps between recorded frames
        equilibration_steps: steps run before the first recorded frame
        friction_per_fs: Langevin friction
        structure: ``fcc`` (the cubic cell) or, for a one-element metal, ``hcp``
        vacancies: atoms removed from the perfect supercell (drawn from ``seed``) before the
            dynamics: their neighbors' sites lose the lattice's symmetry
    """
    from ase.calculators.emt import EMT
    from ase.constraints import FixCom
    from ase.md.velocitydistribution import Stationary, thermalize_momenta

    if n_frames < 1 or stride < 1 or equilibration_steps < 0:
        raise ValueError("n_frames and stride must be positive, equilibration_steps >= 0")
    rng = np.random.default_rng(seed)
    atoms = material_supercell(material, size, structure)
    if not 0 <= vacancies < len(atoms):
        raise ValueError(f"vacancies must be in [0, {len(atoms)}), got {vacancies}")
    if vacancies:
        del atoms[rng.choice(len(atoms), vacancies, replace=False).tolist()]
    atoms.calc = EMT()
    atoms.set_constraint(FixCom())
    thermalize_momenta(atoms, temperature_K=temperature_K, rng=rng)
    Stationary(atoms)
    return langevin_frames(atoms, n_frames, rng, temperature_K, timestep_fs, stride,
                           equilibration_steps, friction_per_fs)  # fmt: skip
