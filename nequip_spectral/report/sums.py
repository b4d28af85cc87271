"""Per-frame sums of a test batch: what the metrics need of each frame, on the CPU."""

import torch
from nequip.data import AtomicDataDict

from .._keys import SPECTRUM_FIT, head_name
from ..config import SpectralProbeConfig
from ..targets import FIELDS, head_target
from ..theory.metrics import frame_sums


def batch_frame_sums(outputs, data, probe: SpectralProbeConfig, num_backbones: int, kinds):
    """Per-frame sums of one test batch (see :mod:`nequip_spectral.theory.metrics`), on the CPU.

    Each kind is read from the heads of its spectrum: energies from the ``e`` heads, forces
    from the ``f`` heads.

    Returns:
        ``head`` of shape ``(backbones, frames, kinds, heads, 6)`` (the heads of
        ``probe.heads`` but the control: each ``l``, then the null heads) and ``control`` of shape
        ``(backbones, frames, kinds, 3)``, kinds in the order of ``kinds``
    """
    num_frames = AtomicDataDict.num_frames(data)
    positions = data[AtomicDataDict.POSITIONS_KEY]
    atoms_frame = AtomicDataDict.with_batch_(dict(data))[AtomicDataDict.BATCH_KEY]
    frame_of = {
        "forces": atoms_frame,
        "energy": torch.arange(num_frames, device=positions.device),
    }

    heads, controls = [], []
    for b in range(num_backbones):
        head_b, control_b = [], []
        for kind in kinds:
            fit = SPECTRUM_FIT[kind]
            control_output = outputs[FIELDS[kind].head(b, head_name(None, fit))].detach()
            if probe.target == "injected":  # yhat_none = 0, so G_none = 0
                control_output = torch.zeros_like(control_output)
            control_target = head_target(outputs, data, b, None, kind, probe.target)
            zero = torch.zeros_like(control_output)
            control_sums = frame_sums(
                control_target, control_output, zero, zero, frame_of[kind], num_frames
            )
            control_b.append(control_sums[:, :3])
            head_b.append(
                torch.stack(
                    [
                        frame_sums(
                            head_target(outputs, data, b, l, kind, probe.target),
                            outputs[FIELDS[kind].head(b, head_name(l, fit))].detach(),
                            control_output,
                            data[FIELDS[kind].signal(l)],
                            frame_of[kind],
                            num_frames,
                        )
                        for l in probe.heads[:-1]  # every head but the control
                    ],
                    dim=1,
                )
            )
        heads.append(torch.stack(head_b, dim=1))
        controls.append(torch.stack(control_b, dim=1))
    return torch.stack(heads).cpu(), torch.stack(controls).cpu()

