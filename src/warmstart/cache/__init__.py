"""The content-addressed cache. ``warmstart.cache`` is both this package and the API call
``warmstart.cache()`` (once the package is imported it shadows the function on ``warmstart``, so the
package itself is callable and returns the same management object).

>>> import warmstart
>>> m = warmstart.cache()        # doctest: +SKIP
"""

from __future__ import annotations

import sys
import types


class _CallablePackage(types.ModuleType):
    def __call__(self, *, settings=None):
        from ..api import cache

        return cache(settings=settings)


sys.modules[__name__].__class__ = _CallablePackage
