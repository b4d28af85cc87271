"""``nequip-spectral-span``: the predicted ceiling ``d * L`` per ``(L, d)``, checked numerically."""


import torch

from ..theory import span_table
from . import command_parser


def main(argv=None) -> None:
    parser = command_parser(__doc__)
    parser.add_argument(
        "--L", type=int, nargs="+", default=[1, 2, 3, 4], help="feature degrees (default: 1 2 3 4)"
    )
    parser.add_argument(
        "--degree", type=int, nargs="+", default=[1, 2, 3], help="head degrees d_r (default: 1 2 3)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(span_table(args.L, args.degree))


if __name__ == "__main__":
    main()
