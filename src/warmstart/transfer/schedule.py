"""How work is handed out: small files and redirects first (they cost a round trip each), then chunks
file by file, ``chunk_size`` each until the last round, which is split evenly across the workers so
they end together; then an idle worker takes the unrequested back half of the chunk in flight with the
most such bytes (never bytes already requested: see :mod:`.plan`)."""

from __future__ import annotations

from .partial import PartialFile
from .plan import chunk_size
from .shared import Shared
from .verify import Verifier
from .worker import Task


class Scheduler:
    def __init__(self, shared: Shared, verifier: Verifier) -> None:
        self.shared, self.verifier = shared, verifier

    def next_task(self) -> Task | None:
        """The next task for a worker, waiting while there is none; None once the pull is over."""
        shared = self.shared
        with shared.cv:
            while True:
                if shared.stop or shared.error is not None:
                    return None
                task = self._first_task()
                if task is not None:
                    return task
                for f in shared.files:  # every byte written but nobody hashing: hand it to the hasher
                    if f.resolved and f.on_disk and not f.hash_busy and not f.finished:
                        self.verifier.poke(f)
                if shared.all_finished():
                    return None
                shared.cv.wait(0.5)

    def _first_task(self) -> Task | None:
        files = self.shared.files
        for f in files:
            if f.finished or f.resolving:
                continue
            if f.stream:
                f.resolving = True
                return Task("stream", f)
            if not f.resolved:
                f.resolving = True
                return Task("resolve", f)
        for f in files:
            if f.resolved and not f.stream and f.plan.pending and not f.finished:
                return self._carve(f)
        return self._steal()

    def _carve(self, f: PartialFile) -> Task:
        shared = self.shared
        size = chunk_size(shared.unassigned(), max(1, shared.workers), shared.settings.chunk_size)
        claim = f.plan.take(size)
        assert claim is not None
        return Task("chunk", f, claim)

    def _steal(self) -> Task | None:
        best, most = None, self.shared.min_steal() - 1
        for f in self.shared.files:
            if f.stream or f.finished:
                continue
            victim = f.plan.victim()
            if victim is not None and victim.stealable() > most:
                best, most = f, victim.stealable()
        if best is None:
            return None
        claim = best.plan.take_from_others(most)
        assert claim is not None
        return Task("chunk", best, claim)
