"""``nequip-spectral-make-aspirin``: write an aspirin MD dataset with GFN2-xTB labels (extxyz)."""

import argparse
import time
from pathlib import Path

from ..data.aspirin import generate_aspirin


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--frames", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--temperature", type=float, default=500.0, help="K")
    parser.add_argument("--stride", type=int, default=20, help="MD steps between frames")
    parser.add_argument("--equilibration", type=int, default=2000, help="MD steps")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.output.exists():
        parser.error(f"{args.output} exists; choose another --output")

    import ase.io

    start = time.perf_counter()
    frames = generate_aspirin(
        args.frames,
        seed=args.seed,
        temperature_K=args.temperature,
        stride=args.stride,
        equilibration_steps=args.equilibration,
    )
    ase.io.write(args.output, frames, format="extxyz")
    print(f"wrote {len(frames)} frames to {args.output} in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
