"""Packages that share their name with an API function stay callable.

``warmstart.load`` is both the package ``warmstart/load/`` and the function ``warmstart.load()``;
once Python imports the package it rebinds ``warmstart.load`` to it. Making the package callable
(forwarding to the API function) keeps ``warmstart.load(...)`` working either way.

>>> import warmstart.load, warmstart
>>> callable(warmstart.load)
True
"""

from __future__ import annotations

import sys
import types


def make_callable(module_name: str, api_name: str) -> None:
    """Turn module ``module_name`` into one whose call is ``warmstart.api.<api_name>(...)``."""

    class _CallablePackage(types.ModuleType):
        def __call__(self, *args, **kwargs):
            from . import api

            return getattr(api, api_name)(*args, **kwargs)

    _CallablePackage.__call__.__doc__ = f"Same as :func:`warmstart.api.{api_name}`."
    sys.modules[module_name].__class__ = _CallablePackage
