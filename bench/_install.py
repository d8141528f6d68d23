"""Make the checkout's warmstart run as an installed one does.

``pip install warmstart`` (a wheel) compiles the package to bytecode, as it did for every peer the
benchmarks run (huggingface_hub, boto3, obstore...). An editable checkout is compiled lazily by the
first process that imports it, and not at all where ``PYTHONDONTWRITEBYTECODE`` is set, in which case
every ``warmstart`` process compiles its modules again (~30 ms, which a whole-process timing would
charge to warmstart alone). The benchmarks call :func:`compile_package` before timing anything.
"""

from __future__ import annotations

import compileall
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "warmstart"


def compile_package() -> None:
    if not compileall.compile_dir(str(PACKAGE), quiet=1):
        raise RuntimeError(f"could not compile {PACKAGE}")
