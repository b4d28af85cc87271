"""The spectrum report: per-frame sums of the test batches (:mod:`.sums`), kept in the
per-frame file (:mod:`.frames`), turned into the report (:mod:`.build`), printed
(:mod:`.table`), drawn (:mod:`.plot`) and written (:mod:`.files`)."""

from .build import backbone_name, build_report
from .files import REPORT_FILES, write_report
from .frames import FRAMES_FILE, FrameSums
from .plot import plot_spectrum
from .sums import batch_frame_sums
from .table import format_table

__all__ = [
    "FRAMES_FILE",
    "REPORT_FILES",
    "FrameSums",
    "backbone_name",
    "batch_frame_sums",
    "build_report",
    "format_table",
    "plot_spectrum",
    "write_report",
]
