"""The ``warmstart`` command (``warmstart.cli:main``): the group in ``base.py``, its commands by subject.

Exit codes: 0 success, 1 runtime failure (one line on stderr), 2 bad usage.
"""

from __future__ import annotations

from . import kube, manage, pull  # noqa: F401  (each registers its commands on the group)
from .base import emit_json, handle_errors, main

__all__ = ["emit_json", "handle_errors", "main"]
