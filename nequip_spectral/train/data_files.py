"""A Hydra callback that names a missing or unreadable data file before NequIP reads it.

NequIP's ``ASEDataset`` fails on a missing file deep in a Hydra traceback, with
``FileNotFoundError(2, 'No such file or directory')`` and neither the file nor the key. This
callback checks every ``*file_path`` entry of the config's ``data:`` block when the job starts,
and stops the job (Hydra turns a callback's exceptions into warnings, so it exits). In a config:

.. code-block:: yaml

  hydra:
    callbacks:
      data_files:
        _target_: nequip_spectral.train.data_files.DataFilesExist
"""

import os
import sys

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, ListConfig


def data_file_paths(node, where: str = "data", is_path: bool = False):
    """``(key, path)`` of every ``*file_path`` entry under ``node`` (a path or a list of them),
    interpolations resolved."""
    if isinstance(node, DictConfig):
        for key in node:
            yield from data_file_paths(node[key], f"{where}.{key}", str(key).endswith("file_path"))
    elif isinstance(node, ListConfig):
        for index, value in enumerate(node):
            yield from data_file_paths(value, f"{where}[{index}]", is_path)
    elif is_path and isinstance(node, str):
        yield where, node


class DataFilesExist(Callback):
    """Refuses a job whose ``data:`` block names a file that is not there or not readable."""

    def on_job_start(self, config, **kwargs) -> None:
        for key, path in data_file_paths(config.get("data")):
            if not os.path.isfile(path):
                sys.exit(f"{key}: no file {os.path.abspath(path)}")
            if not os.access(path, os.R_OK):
                sys.exit(f"{key}: {os.path.abspath(path)} is not readable")
