"""Recipe callables used by the conversion tests (imported by name: ``tests.convert._fns:...``)."""

from __future__ import annotations

import os


def double(t):
    """Multiply by two (shape and dtype kept)."""
    return t * 2


def crash_on_real(t):
    """Kill the process abruptly on the first real (non-meta) tensor: a crash mid-conversion."""
    if t.device.type != "meta":
        os._exit(17)
    return t
