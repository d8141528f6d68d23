"""Compiled code, cached: persisted ``torch.compile`` artifacts and AOTInductor packages.

Neither is a conversion of weights (that is :mod:`warmstart.conversion`): both store what a compiler
made from a model's *code*, keyed by the model's structure and the environment, in the cache home or
in Redis (``WARMSTART_COMPILE_CACHE``).

>>> import warmstart
>>> with warmstart.compile_cache("my-model"): ...                              # doctest: +SKIP
>>> fast = warmstart.aot_compile(model, (x,), key="my-model")                  # doctest: +SKIP

Importing this package does not import torch.
"""

from __future__ import annotations
