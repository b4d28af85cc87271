"""Per-frame sums of a test batch: what the metrics need of each frame, on the CPU."""

import torch
from nequip.data import AtomicDataDict

from ..config import SpectralProbeConfig
from ..heads import SPECTRUM_FIT
from ..theory.metrics import frame_sums


def batch_frame_sums(outputs, data, probe: SpectralProbeConfig, slots, kinds):
    """Per-frame sums of one test batch (see :mod:`nequip_spectral.theory.metrics`), on the CPU.

    Each kind is read from the heads of its spectrum: energies from the ``e`` heads, forces
    from the ``f`` heads.

    Returns:
        ``head`` of shape ``(slots, frames, kinds, heads, 6)`` (the heads of
        ``probe.heads(slot, fit)`` but the control: each ``l``, then the null heads) and
        ``control`` of shape ``(slots, frames, kinds, 3)``, kinds in the order of ``kinds``;
        ``slots``: the probe model's ``(backbone, tap)`` of every set of heads
    """
    num_frames = AtomicDataDict.num_frames(data)
    positions = data[AtomicDataDict.POSITIONS_KEY]
    atoms_frame = AtomicDataDict.with_batch_(dict(data))[AtomicDataDict.BATCH_KEY]
    frame_of = {
        "forces": atoms_frame,
        "energy": torch.arange(num_frames, device=positions.device),
    }

    heads, controls = [], []
    for slot in slots:
        head_b, control_b = [], []
        for kind in kinds:
            *heads_b, control_head = probe.heads(slot, SPECTRUM_FIT[kind])
            control_output = outputs[control_head.output_key(kind)].detach()
            if probe.target == "injected":  # yhat_none = 0, so G_none = 0
                control_output = torch.zeros_like(control_output)
            control_target = control_head.target(outputs, data, kind, probe.target)
            zero = torch.zeros_like(control_output)
            control_sums = frame_sums(
                control_target, control_output, zero, zero, frame_of[kind], num_frames
            )
            control_b.append(control_sums[:, :3])
            head_b.append(
                torch.stack(
                    [
                        frame_sums(
                            head.target(outputs, data, kind, probe.target),
                            outputs[head.output_key(kind)].detach(),
                            control_output,
                            data[head.signal_key(kind)],
                            frame_of[kind],
                            num_frames,
                        )
                        for head in heads_b
                    ],
                    dim=1,
                )
            )
        heads.append(torch.stack(head_b, dim=1))
        controls.append(torch.stack(control_b, dim=1))
    return torch.stack(heads).cpu(), torch.stack(controls).cpu()

