"""``nequip-spectral-report RUN_DIR``: rebuild a probe run's report from its per-frame file.

Reads ``RUN_DIR/spectral_frames.npz`` (written at test time: every test frame's sums, its
place in its source file, the probe block) and writes ``spectral_report.{json,csv,png}`` and
the table into ``--output``: with the run's settings, the same report as the run's own. The
bootstrap can be redone with another block length or number of replicates, or over frames in
the loader's order instead of the trajectory's (to see what time blocks change).
"""

from pathlib import Path

from ..report import REPORT_FILES, build_report, format_table, write_report
from ..report.frames import FrameSums
from . import command_parser


def main(argv=None) -> None:
    parser = command_parser(__doc__)
    parser.add_argument("run_dir", type=Path, help="a probe run directory")
    parser.add_argument("--output", type=Path, help="default: RUN_DIR/rebuilt")
    parser.add_argument("--block-length", type=int, help="default: the run's (or from the data)")
    parser.add_argument("--n-bootstrap", type=int, help="default: the run's")
    parser.add_argument("--frame-order", choices=("source", "loader"), default="source",
                        help="bootstrap blocks in trajectory (source) or loader order "
                        "(default: source)")
    args = parser.parse_args(argv)
    output = args.output or args.run_dir / "rebuilt"
    existing = [name for name in REPORT_FILES if (output / name).exists()]
    if existing:
        parser.error(f"{output} already holds {existing}; choose another --output")
    if args.block_length is not None and args.block_length < 1:
        parser.error("--block-length must be a positive integer")
    try:
        frames = FrameSums.load(args.run_dir)
    except FileNotFoundError as error:
        parser.error(str(error))
    report = build_report(frames, args.n_bootstrap, args.block_length, args.frame_order)
    write_report(report, output)
    print(format_table(report))
    print(f"spectral report written to {output}")


if __name__ == "__main__":
    main()
