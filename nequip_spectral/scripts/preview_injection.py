"""``nequip-spectral-preview``: the size of the injected signal per ``l`` on a dataset.

Prints, for each ``l``, the spread over frames of the injected energy ``eps * s_l`` and the
RMS of its forces, next to the dataset's own energy spread and force RMS, so that an
``amplitude`` can be chosen before training anything.
"""

import argparse

import ase.io
import torch
from nequip.data.transforms import NeighborListTransform

from .._keys import injected_energy_key, injected_forces_key
from ..config import SpectralProbeConfig
from ..data import SpectralInjection, frames_from_ase


def injection_spread(frames, probe: SpectralProbeConfig) -> str:
    """The per-``l`` table of injected energy spread and force RMS, as text."""
    transforms = [NeighborListTransform(r_max=probe.cutoff), SpectralInjection(probe)]
    data = frames_from_ase(frames, transforms)

    def stack(key):
        return torch.stack([frame[key].to(torch.float64) for frame in data])

    energy_std = stack("total_energy").std().item()
    force_rms = stack("forces").square().mean().sqrt().item()
    rows = [
        f"{len(data)} frames; data: energy std {energy_std:.4f} eV, "
        + f"force RMS {force_rms:.4f} eV/A; amplitude {probe.amplitude}, cutoff {probe.cutoff} A",
        f"{'l':>3} {'E_inj mean':>11} {'E_inj std':>10} {'F_inj RMS':>10} {'F_inj/F':>8}",
    ]
    for l in probe.l_values:
        energy = stack(injected_energy_key(l))
        forces_rms = stack(injected_forces_key(l)).square().mean().sqrt().item()
        rows.append(
            f"{l:>3} {energy.mean().item():>11.4f} {energy.std().item():>10.4f} "
            f"{forces_rms:>10.4f} {forces_rms / force_rms:>8.3f}"
        )
    return "\n".join(rows)


def main(argv=None) -> None:
    defaults = SpectralProbeConfig()
    parser = argparse.ArgumentParser(description=__doc__)
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
    args = parser.parse_args(argv)
    torch.set_default_dtype(torch.float64)
    probe = SpectralProbeConfig(
        l_values=tuple(args.l_values),
        amplitude=args.amplitude,
        cutoff=args.cutoff,
        centers=tuple(args.centers),
        neighbors=tuple(args.neighbors),
        center_fraction=args.center_fraction,
        readout="all" if args.center_fraction is None else "centers",
        seed=args.seed,
    )
    frames = ase.io.read(args.dataset, index=f":{args.frames}")
    print(injection_spread(frames, probe))


if __name__ == "__main__":
    main()
