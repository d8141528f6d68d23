"""A rich progress bar on stderr: bytes, rate, ETA and files done/total (terminals only)."""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator


class RichProgress:
    """Implements the transfer engine's ``Progress`` protocol. Thread-safe."""

    def __init__(self, description: str = "pull") -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._lock = threading.Lock()
        self._files_total = 0
        self._files_done = 0
        self._bar = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
            TimeRemainingColumn(), TextColumn("{task.fields[files]}"),
            console=Console(stderr=True), transient=False,
        )
        self._task = None
        self._description = description

    def start(self, total_bytes: int, total_files: int) -> None:
        with self._lock:
            self._files_total = total_files
            if self._task is None:
                self._bar.start()
                self._task = self._bar.add_task(self._description, total=total_bytes, files=f"0/{total_files} files")
            else:
                self._bar.update(self._task, total=total_bytes)

    def advance(self, nbytes: int) -> None:
        if self._task is not None:
            self._bar.advance(self._task, nbytes)

    def file_done(self) -> None:
        with self._lock:
            self._files_done += 1
            if self._task is not None:
                self._bar.update(self._task, files=f"{self._files_done}/{self._files_total} files")

    def close(self) -> None:
        if self._task is not None:
            self._bar.stop()


@contextlib.contextmanager
def terminal_progress(quiet: bool) -> Iterator[RichProgress | None]:
    """A bar for one pull while the block runs, or None when ``quiet`` or stderr is not a terminal."""
    bar = None if quiet or not sys.stderr.isatty() else RichProgress()
    try:
        yield bar
    finally:
        if bar is not None:
            bar.close()
