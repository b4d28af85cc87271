"""``nequip-spectral-make-c5``: write the synthetic 5-fold ring calibration data (extxyz)."""

import argparse
from pathlib import Path

from ..data.c5 import generate_c5


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--frames", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--radial", type=float, default=0.0, help="radial distortion (A)")
    parser.add_argument("--out-of-plane", type=float, default=0.0, help="distortion (A)")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.output.exists():
        parser.error(f"{args.output} exists; choose another --output")

    import ase.io

    frames = generate_c5(args.frames, args.seed, args.radial, args.out_of_plane)
    ase.io.write(args.output, frames, format="extxyz")
    print(f"wrote {len(frames)} frames to {args.output}")


if __name__ == "__main__":
    main()
