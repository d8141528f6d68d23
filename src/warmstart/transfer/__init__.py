"""The parallel ranged-read engine (see :mod:`warmstart.transfer.engine`)."""

from .engine import FileJob, FileResult, Stats, Transfer
from .probe import Probed, Target, probe_all, probe_unsized

__all__ = ["FileJob", "FileResult", "Probed", "Stats", "Target", "Transfer", "probe_all", "probe_unsized"]
