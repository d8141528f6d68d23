"""The content-addressed cache: a plain package, one responsibility per module.

::

    home.py      Cache: one cache home opened for use (layout + store + index + tiers), the budget
    manage.py    CacheManager: ls, du, rm, gc, verify, pin/unpin, promote, adopt (``warmstart.cache()``)
    layout.py    where the parts of a home live          store.py     blobs: publish, hash, remove
    index.py     every SQL query (index_schema.py: opening, schema, migrations)
    leases.py    which live processes hold which blobs   paths.py     the one gate for names and paths
    evict.py     frozen eviction / gc plans, executed in a crash-safe order   tmpdir.py   tmp/ housekeeping
    views.py     every view path: Hub layout, snapshot folders, RAM tier views, --to directories
    view_scan.py what the views of a home name, read back to rebuild a lost index
    tiers/       memory.py (RAM tier), shared.py (shared tier), verified_copy.py (copy while hashing)
    verify.py    re-hash blobs and check views           rebuild.py   rebuild index.db from the views
    adopt.py     take in a huggingface_hub cache without copying

Imports point one way: manage -> verify, rebuild, adopt -> home -> evict, tiers -> views, leases,
tmpdir -> index, store -> layout, paths. Eviction, views and tiers get the pieces they need (layout,
index, store), never the whole cache: :class:`~warmstart.cache.home.Cache` composes them.
"""
