"""``nequip-spectral-preview``: the size of the injected signal per ``l`` on a dataset.

Prints, for each ``l``, the spread over frames of the injected energy ``eps * s_l`` and the
RMS of its forces, next to the dataset's own energy spread and force RMS, so that an
``amplitude`` can be chosen before training anything. With ``--reference`` (a crystal's
perfect structure, the same atoms in the same order) also the share of the injected force that
is there with every atom at its site, the same centers and direction: at sites of cubic
symmetry a probe cannot make the ``l > L`` part of it (``docs/method.md``).
"""


import re

import ase.io
import torch
from nequip.data.transforms import NeighborListTransform

from .._keys import injected_energy_key, injected_forces_key
from ..config import SpectralProbeConfig, SpectralProbeError
from ..data import SpectralInjection, frames_from_ase
from . import command_parser


def injection_spread(frames, probe: SpectralProbeConfig, reference=None) -> str:
    """The per-``l`` table of injected energy spread and force RMS, as text; with a
    ``reference`` structure (ASE ``Atoms``) also ``F_ref^2/F_inj^2``."""
    injection = SpectralInjection(probe)
    neighbors = NeighborListTransform(r_max=probe.cutoff)
    data = frames_from_ase(frames, [neighbors, injection])

    def stack(key, frames=data):
        return torch.stack([frame[key].to(torch.float64) for frame in frames])

    energy_std = stack("total_energy").std().item()
    force_rms = stack("forces").square().mean().sqrt().item()
    rows = [
        f"{len(data)} frames; data: energy std {energy_std:.4f} eV, "
        + f"force RMS {force_rms:.4f} eV/A; amplitude {probe.amplitude}, cutoff {probe.cutoff} A",
        f"{'l':>3} {'E_inj mean':>11} {'E_inj std':>10} {'F_inj RMS':>10} {'F_inj/F':>8}"
        + (f" {'F_ref^2/F_inj^2':>16}" if reference is not None else ""),
    ]
    if reference is not None:  # each frame's signal with its atoms at their reference sites
        at_sites = []
        for atoms, frame in zip(frames, data, strict=True):
            moved = atoms.copy()
            moved.positions = reference.positions
            (moved,) = frames_from_ase([moved], [neighbors])
            held = (*injection.marked_direction(frame), injection.marked_centers(frame))
            at_sites.append(injection.inject(moved, *held))
    for l in probe.l_values:
        energy = stack(injected_energy_key(l))
        forces_power = stack(injected_forces_key(l)).square().mean()
        row = (
            f"{l:>3} {energy.mean().item():>11.4f} {energy.std().item():>10.4f} "
            f"{forces_power.sqrt().item():>10.4f} {forces_power.sqrt().item() / force_rms:>8.3f}"
        )
        if reference is not None:
            share = stack(injected_forces_key(l), at_sites).square().mean() / forces_power
            row += f" {share.item():>16.3f}"
        rows.append(row)
    return "\n".join(rows)


def main(argv=None) -> None:
    defaults = SpectralProbeConfig()
    parser = command_parser(__doc__)
    parser.add_argument("dataset", help="any ASE-readable file with energies and forces")
    parser.add_argument("--frames", type=int, default=200, help="first N frames")
    parser.add_argument("--l-values", type=int, nargs="+", default=list(defaults.l_values),
                        help="probed l (default: %(default)s)")
    parser.add_argument("--amplitude", type=float, default=defaults.amplitude,
                        help="eps, energy units of the data (default: %(default)s)")
    parser.add_argument("--cutoff", type=float, default=defaults.cutoff,
                        help="pair cutoff of the signal (default: %(default)s)")
    parser.add_argument("--centers", nargs="+", default=list(defaults.centers),
                        help="center species (default: %(default)s)")
    parser.add_argument("--neighbors", nargs="+", default=list(defaults.neighbors),
                        help="neighbor species (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=defaults.seed,
                        help="probe seed: the marked directions (default: %(default)s)")
    parser.add_argument("--center-fraction", type=float, default=None,
                        help="a seeded fraction of the center atoms as centers, for one-element "
                        "systems (spectral_probe.center_fraction; default: every center atom)")
    parser.add_argument("--reference", default=None,
                        help="the perfect crystal (the frames' atoms in the same order, any "
                        "ASE-readable file): adds the share of the injected force present with "
                        "every atom at its site")  # fmt: skip
    args = parser.parse_args(argv)
    torch.set_default_dtype(torch.float64)
    try:
        probe = SpectralProbeConfig(
            l_values=tuple(args.l_values),
            amplitude=args.amplitude,
            cutoff=args.cutoff,
            centers=tuple(args.centers),
            neighbors=tuple(args.neighbors),
            center_fraction=args.center_fraction,
            seed=args.seed,
        )
    except SpectralProbeError as error:  # the config's keys are this command's flags
        parser.error(re.sub(r"spectral_probe\.(\w+)", lambda key: "--" + key[1].replace("_", "-"),
                            str(error)))  # fmt: skip
    frames = ase.io.read(args.dataset, index=f":{args.frames}")
    reference = None
    if args.reference is not None:
        reference = ase.io.read(args.reference)
        if reference.get_chemical_symbols() != frames[0].get_chemical_symbols():
            parser.error(f"--reference {args.reference}: its atoms are not the dataset's "
                         "(the same species in the same order)")  # fmt: skip
    print(injection_spread(frames, probe, reference))


if __name__ == "__main__":
    main()
