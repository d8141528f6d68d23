"""The parallel ranged-read engine (see :mod:`warmstart.transfer.engine`)."""

from .engine import FileJob, FileResult, Stats, Transfer

__all__ = ["FileJob", "FileResult", "Stats", "Transfer"]
