"""The commands that write the offline datasets as extxyz files.

``nequip-spectral-make-aspirin``: aspirin molecular dynamics with GFN2-xTB labels
(:mod:`nequip_spectral.data.aspirin`). ``nequip-spectral-make-c5``: the synthetic 5-fold ring
of the calibration (:mod:`nequip_spectral.data.c5`).
"""

import argparse
import time
from pathlib import Path


def _parser(description: str, frames: int) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--frames", type=int, default=frames)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, required=True)
    return parser


def _write(parser, args, generate) -> None:
    """Refuse an existing ``--output``, then generate the frames and write them."""
    if args.output.exists():
        parser.error(f"{args.output} exists; choose another --output")
    import ase.io

    start = time.perf_counter()
    frames = generate()
    ase.io.write(args.output, frames, format="extxyz")
    print(f"wrote {len(frames)} frames to {args.output} in {time.perf_counter() - start:.0f} s")


def make_aspirin(argv=None) -> None:
    from ..data.aspirin import generate_aspirin

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
    from ..data.c5 import generate_c5

    parser = _parser("Write the synthetic 5-fold ring calibration data (extxyz).", 600)
    parser.add_argument("--radial", type=float, default=0.0, help="radial distortion (A)")
    parser.add_argument("--out-of-plane", type=float, default=0.0, help="distortion (A)")
    parser.add_argument("--stretch", type=float, default=0.0,
                        help="systematic radial shift of the first ring atom (A)")  # fmt: skip
    args = parser.parse_args(argv)
    _write(parser, args, lambda: generate_c5(args.frames, args.seed, args.radial,
                                             args.out_of_plane, args.stretch))  # fmt: skip
