"""The per-frame file ``spectral_frames.npz``: every test frame's sums, with the frame's place
in its source file, from which the whole report is rebuilt.

A frame is recognised by a digest of its positions and species (transforms do not see a
frame's index): the test split is scanned once before the run, recording each frame's digest
with its index in its file, and each test batch's frames are looked up by the same digest.
Frames are kept in trajectory order (file, then index), so that bootstrap blocks are runs of
consecutive MD frames whatever the loader's (or the DDP ranks') order was; a frame that a
distributed sampler repeated to even out the ranks is counted once.
"""

import contextlib
import dataclasses
import json
import weakref
from collections import deque
from pathlib import Path

import numpy as np
import torch
from nequip.data import AtomicDataDict

from ..data.injection import frame_digest

FRAMES_FILE = "spectral_frames.npz"
UNKNOWN = ("", -1)  # the source of a frame that was not scanned


def frame_id(frame: AtomicDataDict.Type) -> int:
    """A frame's identity: a 64-bit digest of its positions and species."""
    digest = frame_digest(
        frame[AtomicDataDict.POSITIONS_KEY], frame[AtomicDataDict.ATOMIC_NUMBERS_KEY]
    )
    return int.from_bytes(digest, "little", signed=True)


_DATASET_IDS = weakref.WeakKeyDictionary()  # dataset -> frame_id of each of its frames


def dataset_frame_ids(dataset, ids: list[int] | None = None) -> list[int]:
    """:func:`frame_id` of every frame of ``dataset``, each frame transformed once a process:
    given ``ids`` (by a scan that loaded every frame anyway), they are kept for later calls.
    (A dataset that cannot be weakly referenced, a plain list, is scanned at every call.)"""
    if ids is None:
        try:
            return _DATASET_IDS[dataset]
        except (KeyError, TypeError):  # not scanned yet, or not to be kept
            ids = [frame_id(dataset[i]) for i in range(len(dataset))]
    with contextlib.suppress(TypeError):
        _DATASET_IDS[dataset] = list(ids)
    return list(ids)


def batch_frame_ids(data: AtomicDataDict.Type) -> torch.Tensor:
    """``(num_frames,)`` int64: :func:`frame_id` of every frame of a batch, on the CPU."""
    sizes = data[AtomicDataDict.NUM_NODES_KEY].view(-1).tolist()
    positions = data[AtomicDataDict.POSITIONS_KEY].split(sizes)
    species = data[AtomicDataDict.ATOMIC_NUMBERS_KEY].split(sizes)
    return torch.tensor(
        [
            frame_id({AtomicDataDict.POSITIONS_KEY: p, AtomicDataDict.ATOMIC_NUMBERS_KEY: s})
            for p, s in zip(positions, species, strict=True)
        ],
        dtype=torch.int64,
    )


def frame_origin(dataset, index: int) -> tuple:
    """``(dataset, index)`` of a dataset's frame in the dataset under any ``Subset`` s."""
    while hasattr(dataset, "indices") and hasattr(dataset, "dataset"):
        dataset, index = dataset.dataset, int(dataset.indices[index])
    return dataset, index


def frame_source(dataset, index: int) -> tuple[str, int]:
    """``(file, index in the file)`` of a dataset's frame, through any ``Subset`` s (``""``
    for a dataset read from no file NequIP names: ``file_path``, or HDF5's ``file_name``)."""
    dataset, index = frame_origin(dataset, index)
    file = getattr(dataset, "file_path", None) or getattr(dataset, "file_name", "")
    return str(file), index


@dataclasses.dataclass
class FrameSums:
    """The test set's per-frame sums in trajectory order, and what the report needs besides.

    Attributes:
        head: ``(slots, frames, kinds, l_values, 6)`` per-frame head sums, a slot a
            backbone's tap (backbone-major)
        control: ``(slots, frames, kinds, 3)`` per-frame control sums
        source_file, source_index: ``(frames,)`` where each frame comes from (``""``, ``-1``
            where unknown)
        loader_position: ``(frames,)`` each frame's position in the order the test loader (or
            the gathered DDP ranks) gave it
        context: the probe block, ``L``, the kinds, the solver summary, the taps (each with
            its ``L`` and solver summary; ``L`` and the solver's are the last's), the bootstrap
            settings
    """

    head: np.ndarray
    control: np.ndarray
    source_file: np.ndarray
    source_index: np.ndarray
    loader_position: np.ndarray
    context: dict

    @classmethod
    def from_test(cls, head, control, ids, sources: dict, context: dict) -> "FrameSums":
        """Locate the gathered test frames in their files and put them in trajectory order.

        Args:
            head, control: per-frame sums in the loader's order
            ids: ``(frames,)`` :func:`frame_id` of each frame
            sources: ``{frame_id: [(file, index), ...]}`` from the scan of the test split
        """
        remaining = {key: deque(value) for key, value in sources.items()}
        keep, located = [], []
        for position, key in enumerate(np.asarray(ids).tolist()):
            if key in remaining and not remaining[key]:
                continue  # more copies than the split holds: a sampler's padding
            keep.append(position)
            located.append(remaining[key].popleft() if key in remaining else UNKNOWN)
        files = np.array([f for f, _ in located], dtype=str)
        indices = np.array([i for _, i in located], dtype=np.int64)
        order = np.lexsort((np.asarray(keep), indices, files))
        keep = np.asarray(keep, dtype=np.int64)[order]
        return cls(
            head=np.asarray(head)[:, keep],
            control=np.asarray(control)[:, keep],
            source_file=files[order],
            source_index=indices[order],
            loader_position=keep,
            context=context,
        )

    @property
    def taps(self) -> list[dict]:
        """``{"name", "L", "solver"}`` of every tap (one for the files of earlier versions)."""
        context = self.context
        return context.get("taps") or [{"name": None, "L": context["L"],
                                        "solver": context["solver"]}]  # fmt: skip

    def at_tap(self, t: int) -> "FrameSums":
        """The sums of the heads that read tap ``t`` (the slots are backbone-major)."""
        taps = self.taps
        step = len(taps)
        context = {**self.context, "L": taps[t]["L"], "solver": taps[t]["solver"],
                   "taps": [taps[t]]}  # fmt: skip
        return dataclasses.replace(self, head=self.head[t::step], control=self.control[t::step],
                                   context=context)  # fmt: skip

    @property
    def sources_known(self) -> bool:
        return bool(np.all(self.source_index >= 0))

    def in_order(self, frame_order: str = "source") -> tuple[np.ndarray, np.ndarray]:
        """``(head, control)`` with frames in trajectory (``source``) or ``loader`` order."""
        if frame_order == "source":
            return self.head, self.control
        if frame_order == "loader":
            order = np.argsort(self.loader_position)
            return self.head[:, order], self.control[:, order]
        raise ValueError(f"frame_order must be 'source' or 'loader', got {frame_order!r}")

    def save(self, path) -> None:
        np.savez_compressed(
            path,
            **{
                field.name: getattr(self, field.name)
                for field in dataclasses.fields(self)
                if field.name != "context"
            },
            context=np.array(json.dumps(self.context)),
        )

    @classmethod
    def load(cls, path) -> "FrameSums":
        path = Path(path)
        if path.is_dir():
            path = path / FRAMES_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"no per-frame file {path}: it is written by the probe's test stage"
            )
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
        context = json.loads(str(arrays.pop("context")))
        return cls(**arrays, context=context)
