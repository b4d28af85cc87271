"""Aspirin molecular dynamics with GFN2-xTB energies and forces, made offline.

rMD17 cannot be downloaded here, so the project makes its own aspirin data the way rMD17 was
made: Langevin dynamics at 500 K with 0.5 fs steps, an equilibration stretch first, frames
spaced apart, energies in eV and forces in eV/A from a real electronic-structure method
(GFN2-xTB through ``tblite``, the ``data`` extra). Deterministic for a given seed on a given
machine. The bundled file (``nequip_spectral.data.BUNDLED_ASPIRIN``) was made with::

    OMP_NUM_THREADS=1 nequip-spectral-make-aspirin --frames 1500 --seed 0 \\
        --output nequip_spectral/data/aspirin_gfn2xtb_500K.extxyz
"""

import numpy as np
from ase import Atoms

from .md import langevin_frames

# aspirin (C9H8O4) relaxed with GFN2-xTB, in A
ASPIRIN_SYMBOLS = ["C"] * 6 + ["H"] * 4 + ["C", "O", "O", "H", "O", "C", "O", "C", "H", "H", "H"]
ASPIRIN_POSITIONS = [
    [1.59013, 0.14100, -0.00478],
    [0.83971, 1.31279, 0.14808],
    [-0.53695, 1.22869, 0.32381],
    [-1.16611, -0.00219, 0.35656],
    [-0.42893, -1.16584, 0.19993],
    [0.93630, -1.09003, 0.01106],
    [-1.10330, 2.14293, 0.41989],
    [-2.23537, -0.05076, 0.49604],
    [-0.91972, -2.12637, 0.21659],
    [1.53143, -1.97962, -0.12893],
    [3.05924, 0.13139, -0.22721],
    [3.64464, -0.76025, -0.78493],
    [3.68827, 1.19637, 0.28431],
    [4.63580, 1.16230, 0.07921],
    [1.41328, 2.55720, 0.01816],
    [1.91567, 3.24855, 1.06815],
    [2.41133, 4.31781, 0.87176],
    [1.77904, 2.59935, 2.42126],
    [0.73074, 2.40315, 2.63942],
    [2.31782, 1.65431, 2.42946],
    [2.19398, 3.26274, 3.17403],
]


def gfn2_calculator():
    """GFN2-xTB as an ASE calculator (needs ``pip install nequip-spectral[data]``)."""
    try:
        from tblite.ase import TBLite
    except ImportError as error:
        raise ImportError("the aspirin generator needs tblite: pip install -e '.[data]'") from error
    return TBLite(method="GFN2-xTB", verbosity=0)


def generate_aspirin(
    n_frames: int,
    seed: int = 0,
    temperature_K: float = 500.0,
    timestep_fs: float = 0.5,
    stride: int = 20,
    equilibration_steps: int = 2000,
    friction_per_fs: float = 0.01,
) -> list[Atoms]:
    """Run Langevin dynamics of aspirin and return ``n_frames`` frames with energies and forces.

    Args:
        n_frames: frames to record
        seed: seeds the initial velocities and the Langevin noise
        temperature_K: thermostat temperature
        timestep_fs: integration step
        stride: steps between recorded frames
        equilibration_steps: steps run before the first recorded frame
        friction_per_fs: Langevin friction
    """
    from ase.constraints import FixCom
    from ase.md.velocitydistribution import Stationary, ZeroRotation, thermalize_momenta

    rng = np.random.default_rng(seed)
    atoms = Atoms(ASPIRIN_SYMBOLS, positions=ASPIRIN_POSITIONS)
    atoms.calc = gfn2_calculator()
    atoms.set_constraint(FixCom())
    thermalize_momenta(atoms, temperature_K=temperature_K, rng=rng)
    Stationary(atoms)
    ZeroRotation(atoms)
    return langevin_frames(atoms, n_frames, rng, temperature_K, timestep_fs, stride,
                           equilibration_steps, friction_per_fs)  # fmt: skip
