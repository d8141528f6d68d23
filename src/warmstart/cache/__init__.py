"""The content-addressed cache. ``warmstart.cache`` itself is the API call ``warmstart.cache()`` (the
management object); this package is reached with ``from warmstart.cache import ...``.

>>> import warmstart
>>> m = warmstart.cache()        # doctest: +SKIP
"""

from __future__ import annotations
