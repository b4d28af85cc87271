"""The commands that write the offline datasets as extxyz files.

``nequip-spectral-make-aspirin``: aspirin molecular dynamics with GFN2-xTB labels
(:mod:`nequip_spectral.generators.aspirin`). ``nequip-spectral-make-c5``: the five-fold (C5)
ring test system of the calibration (:mod:`nequip_spectral.generators.c5_ring`).
``nequip-spectral-make-material``: periodic fcc metals and the Cu3Au alloy with EMT labels
(:mod:`nequip_spectral.generators.materials`).
"""

import argparse
import math
import time
from pathlib import Path

from . import DefaultsShown


def _parser(description: str, frames: int) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description, formatter_class=DefaultsShown)
    parser.add_argument("--frames", type=int, default=frames, help="frames to write")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same file)")
    parser.add_argument(
        "--output", type=Path, required=True, help="extxyz file to write (not an existing one)"
    )
    return parser


def _write(parser, args, generate) -> None:
    """Refuse an existing ``--output``, then generate the frames and write them."""
    if args.output.exists():
        parser.error(f"{args.output} exists; choose another --output")
    import ase.io

    start = time.perf_counter()
    frames = generate()
    ase.io.write(args.output, frames, format="extxyz")
    first = frames[0]
    cell = ""
    if first.pbc.any():
        cell = ", periodic cell " + " x ".join(f"{length:.2f}" for length in first.cell.lengths())
        cell += " A"
    print(f"wrote {len(frames)} frames of {first.get_chemical_formula()} ({len(first)} atoms"
          f"{cell}) to {args.output} in {time.perf_counter() - start:.0f} s")


def make_aspirin(argv=None) -> None:
    from ..generators.aspirin import generate_aspirin

    parser = _parser("Write an aspirin MD dataset with GFN2-xTB labels (extxyz).", 1500)
    parser.add_argument("--temperature", type=float, default=500.0, help="K")
    parser.add_argument("--stride", type=int, default=20, help="MD steps between frames")
    parser.add_argument("--equilibration", type=int, default=2000, help="MD steps")
    args = parser.parse_args(argv)
    _write(parser, args, lambda: generate_aspirin(
        args.frames, seed=args.seed, temperature_K=args.temperature, stride=args.stride,
        equilibration_steps=args.equilibration,
    ))  # fmt: skip


def make_c5(argv=None) -> None:
    from ..generators.c5_ring import generate_c5

    parser = _parser("Write the synthetic 5-fold ring calibration data (extxyz).", 600)
    parser.add_argument("--radial", type=float, default=0.0, help="radial distortion (A)")
    parser.add_argument("--out-of-plane", type=float, default=0.0, help="distortion (A)")
    parser.add_argument("--stretch", type=float, default=0.0,
                        help="systematic radial shift of the first ring atom (A)")  # fmt: skip
    args = parser.parse_args(argv)
    _write(parser, args, lambda: generate_c5(args.frames, args.seed, args.radial,
                                             args.out_of_plane, args.stretch))  # fmt: skip


def make_material(argv=None) -> None:
    from ..generators.materials import FCC_METALS, MATERIALS, STRUCTURES, generate_material

    parser = _parser(
        "Write a periodic metal or alloy MD dataset with EMT labels (extxyz): Langevin "
        "dynamics of a supercell of a 4-atom cell, energies (eV), forces (eV/A), cell "
        "and pbc.",
        1000,
    )
    parser.add_argument("--material", choices=MATERIALS, default="Cu3Au",
                        help="an fcc metal of EMT, or the L1_2 alloy Cu3Au")  # fmt: skip
    parser.add_argument("--size", type=int, nargs="+", default=3, metavar="N",
                        help="repeats of the 4-atom cell: N, or NX NY NZ")  # fmt: skip
    parser.add_argument("--structure", choices=STRUCTURES, default="fcc",
                        help="fcc, or hcp stacking for a one-element metal")  # fmt: skip
    parser.add_argument("--vacancies", type=int, default=0,
                        help="atoms removed (drawn from the seed) before the dynamics")  # fmt: skip
    parser.add_argument("--temperature", type=float, default=500.0, help="thermostat, K")
    parser.add_argument("--timestep", type=float, default=2.0, help="MD step, fs")
    parser.add_argument("--stride", type=int, default=10, help="MD steps between frames")
    parser.add_argument("--equilibration", type=int, default=500,
                        help="MD steps before the first frame")  # fmt: skip
    parser.add_argument("--friction", type=float, default=0.01, help="Langevin friction, 1/fs")
    args = parser.parse_args(argv)
    size = [args.size] if isinstance(args.size, int) else args.size
    if len(size) not in (1, 3) or min(size) < 1:
        parser.error(f"--size takes one or three positive integers, got {size}")
    if min(args.frames, args.stride) < 1 or args.equilibration < 0:
        parser.error("--frames and --stride must be positive, --equilibration >= 0")
    if args.structure == "hcp" and args.material not in FCC_METALS:
        parser.error(f"--structure hcp is for the one-element metals {list(FCC_METALS)}")
    size = tuple(size * (3 // len(size)))  # N -> (N, N, N)
    atoms = 4 * math.prod(size)
    if not 0 <= args.vacancies < atoms:
        parser.error(f"--vacancies must be at least 0 and fewer than the {atoms} atoms")
    _write(parser, args, lambda: generate_material(
        args.material, args.frames, size=size, seed=args.seed, temperature_K=args.temperature,
        timestep_fs=args.timestep, stride=args.stride, equilibration_steps=args.equilibration,
        friction_per_fs=args.friction, structure=args.structure,
        vacancies=args.vacancies,
    ))  # fmt: skip
