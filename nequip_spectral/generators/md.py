"""A Langevin trajectory recorded as labelled frames: what the dataset generators share."""

from ase import Atoms, units


def langevin_frames(
    atoms: Atoms,
    n_frames: int,
    rng,
    temperature_K: float,
    timestep_fs: float,
    stride: int,
    equilibration_steps: int,
    friction_per_fs: float,
) -> list:
    """``n_frames`` frames of a Langevin run of ``atoms`` (its calculator and momenta set),
    one every ``stride`` steps after ``equilibration_steps``, each labelled with its energy
    and its true forces (not the forces a constraint projects), periodic ones wrapped into
    the cell (a move by lattice vectors: energy and forces unchanged)."""
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.md.langevin import Langevin

    dynamics = Langevin(
        atoms,
        timestep=timestep_fs * units.fs,
        temperature_K=temperature_K,
        friction=friction_per_fs / units.fs,
        fixcm=False,
        rng=rng,
    )
    dynamics.run(equilibration_steps)
    frames = []
    for _ in range(n_frames):
        dynamics.run(stride)
        frame = Atoms(atoms.get_chemical_symbols(), positions=atoms.get_positions(),
                      cell=atoms.get_cell(), pbc=atoms.get_pbc())  # fmt: skip
        if frame.pbc.any():
            frame.wrap()
        forces = atoms.get_forces(apply_constraint=False)
        frame.calc = SinglePointCalculator(
            frame, energy=atoms.get_potential_energy(), forces=forces
        )
        frames.append(frame)
    return frames
