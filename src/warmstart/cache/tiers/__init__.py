"""Cache tiers around the disk cache: a RAM tier above it (:mod:`.memory`) and a shared tier below it
(:mod:`.shared`), plus the hashing copy that brings blobs in from the shared tier (:mod:`.verified_copy`).

::

    $WARMSTART_MEMORY_DIR/ (e.g. /dev/shm/warmstart)     $WARMSTART_SHARED_DIR/ (CephFS, NFS, JuiceFS…)
    ├── blobs/sha256/ab/<digest>   copies of disk blobs   ├── blobs/sha256/ab/<digest>   verified content
    ├── views/<name>/<file> -> …/blobs/sha256/…           ├── keys/<transfer key>        "<digest>" (files
    └── tmp/                                             │                   with a git blob id, no sha256)
                                                         └── (temporary names: .<digest>.<uuid>.tmp)

A tier gets the pieces of the disk cache it needs (its layout), never the whole cache:
:class:`warmstart.cache.home.Cache` composes them.
"""
