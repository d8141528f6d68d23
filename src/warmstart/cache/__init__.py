"""The content-addressed cache. ``warmstart.cache`` is both this package and the API call
``warmstart.cache()`` (once the package is imported it shadows the function on ``warmstart``, so the
package itself is callable and returns the same management object).

>>> import warmstart
>>> m = warmstart.cache()        # doctest: +SKIP
"""

from __future__ import annotations

from .._callable import make_callable

make_callable(__name__, "cache")
