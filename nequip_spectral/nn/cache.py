"""A bounded per-frame cache of what a frozen backbone computes, kept on the CPU."""

import hashlib
import itertools

import torch
from nequip.data import AtomicDataDict

# everything of a frame that a NequIP backbone reads
_FRAME_INPUTS = (
    AtomicDataDict.POSITIONS_KEY,
    AtomicDataDict.ATOM_TYPE_KEY,
    AtomicDataDict.CELL_KEY,
    AtomicDataDict.PBC_KEY,
)
_EDGE_INPUTS = (AtomicDataDict.EDGE_CELL_SHIFT_KEY,)


def batch_frame_keys(data: AtomicDataDict.Type) -> list:
    """One digest per frame of a batch, of everything the backbone reads of that frame:
    positions, types, cell, periodicity, and its edges with their cell shifts."""
    positions = data[AtomicDataDict.POSITIONS_KEY]
    sizes = data[AtomicDataDict.NUM_NODES_KEY].view(-1).tolist()
    batch = AtomicDataDict.with_batch_(dict(data))[AtomicDataDict.BATCH_KEY]
    edges = data[AtomicDataDict.EDGE_INDEX_KEY]
    edge_frame = batch[edges[0]]
    starts = [0, *torch.tensor(sizes).cumsum(0).tolist()]
    keys = []
    for f, (start, stop) in enumerate(itertools.pairwise(starts)):
        digest = hashlib.blake2b(digest_size=16)
        for key in _FRAME_INPUTS:
            if key in data:
                value = data[key]
                value = value[start:stop] if value.shape[0] == len(positions) else value[f]
                digest.update(value.detach().cpu().contiguous().numpy().tobytes())
        mine = edge_frame == f
        digest.update((edges[:, mine] - start).cpu().contiguous().numpy().tobytes())
        for key in _EDGE_INPUTS:
            if key in data:
                digest.update(data[key][mine].detach().cpu().contiguous().numpy().tobytes())
        keys.append(digest.digest())
    return keys


class FrameCache:
    """Per-frame tensors, keyed by :func:`batch_frame_keys` and a name, on the CPU.

    Past ``max_bytes`` nothing new is stored: frames not yet cached are computed again each
    time they come (what is cached stays).

    Args:
        max_bytes: the most memory the cache may hold
    """

    def __init__(self, max_bytes: int = 2 * 2**30):
        self.max_bytes = max_bytes
        self.bytes = 0
        self._values = {}

    def get(self, keys, name: str, device):
        """The frames' values, concatenated on ``device``, or ``None`` unless all are cached."""
        values = [self._values.get((key, name)) for key in keys]
        if any(value is None for value in values):
            return None
        return torch.cat(values).to(device)

    def put(self, keys, name: str, value: torch.Tensor, sizes) -> None:
        """Store each frame's part of ``value`` (split along dim 0 by ``sizes``)."""
        for key, part in zip(keys, value.detach().split(sizes), strict=True):
            size = part.numel() * part.element_size()
            if (key, name) not in self._values and self.bytes + size <= self.max_bytes:
                self._values[(key, name)] = part.cpu().clone()
                self.bytes += size

    def clear(self) -> None:
        self._values.clear()
        self.bytes = 0
