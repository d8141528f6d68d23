"""Persisted ``torch.compile`` artifacts: compile once, start warm in every later process.

Wraps ``torch.compiler.save_cache_artifacts`` / ``load_cache_artifacts`` (Inductor FX-graph, AOTAutograd
and autotuning caches, serialised to one blob). Entries are keyed by ``sha256(key, torch version,
device kind and capability, Python version)`` and stored in the warmstart cache home
(``<home>/compile/<digest>``) or, with ``WARMSTART_COMPILE_CACHE=redis://host:port/db``, in Redis, so
every pod of a deployment shares them. ``WARMSTART_COMPILE_CACHE`` may also name a directory.

Entry format: ``b"WSCC2\\n" + TAG + b"\\n" + JSON(key, environment, payload sha256) + b"\\n" + payload``,
where ``TAG`` is ``hmac-sha256:<hex>`` when ``WARMSTART_COMPILE_CACHE_KEY`` is set, else ``-``. The MAC covers
a domain prefix, the entry's kind (``compile``/``aot``), its digest (so it cannot be replayed under another
key or environment), the JSON header and the payload.

**Trust.** Loading an entry runs code: torch unpickles compile artifacts, and an AOT package is native code
that is ``dlopen``-ed. Entries in this user's cache home are trusted. Entries from Redis or a directory named
by ``WARMSTART_COMPILE_CACHE`` are loaded only when their tag verifies with ``WARMSTART_COMPILE_CACHE_KEY``
(checked before anything is parsed, unpickled, extracted or loaded), or, without a key, only when the user
opted in with ``WARMSTART_COMPILE_CACHE_TRUST=1``; otherwise they are misses (warned about once).

An entry whose environment differs (another torch version, GPU or Python) or a corrupt entry is logged and
ignored: the model compiles afresh, and nothing fails because of the cache. An unreachable Redis is logged and
the local cache home is used instead (read and written) for the rest of that entry's life.

>>> with compile_cache("llama-7b-decode"):            # doctest: +SKIP
...     model = torch.compile(model); model(x)        # hits: loaded before, saved after
>>> cc = CompileCache("llama-7b-decode"); cc.load(); ...; cc.save()   # explicit form  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import platform
import sys
from pathlib import Path
from typing import Any

from .._fs import atomic_write, read_regular
from ..config import Settings
from ..errors import ConfigError

__all__ = ["CompileCache", "compile_cache", "environment"]

log = logging.getLogger(__name__)
MAGIC = b"WSCC2\n"
#: entries of earlier versions (no tag line); read from trusted stores only
MAGIC_V1 = b"WSCC1\n"
TAG_PREFIX = b"hmac-sha256:"
NO_TAG = b"-"
_DOMAIN = b"warmstart compile-cache entry v2\0"
#: the largest entry read from any store (a file or a Redis value): a bigger one is a miss, never read
MAX_ENTRY_BYTES = 4 << 30
_warned: set[tuple[str, str]] = set()  # (store, reason): each refusal is a warning once per process


def _warn_once(where: str, reason: str, msg: str, *args: Any) -> None:
    if (where, reason) in _warned:
        log.info(msg, *args)
    else:
        _warned.add((where, reason))
        log.warning(msg, *args)


def entry_tag(secret: bytes, kind: str, digest: str, body: bytes) -> bytes:
    """The entry's tag: HMAC-SHA256 over domain, kind, digest and ``body`` (header line + payload)."""
    msg = _DOMAIN + kind.encode() + b"\0" + digest.encode() + b"\0" + body
    return TAG_PREFIX + hmac.new(secret, msg, hashlib.sha256).hexdigest().encode()


def environment() -> dict[str, str]:
    """What a compiled artifact depends on: torch version, device kind and capability, Python version."""
    import torch

    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        device = f"cuda:{torch.cuda.get_device_name()}:sm{major}{minor}"
    else:
        device = f"cpu:{platform.machine()}"
    return {"torch": torch.__version__, "device": device, "python": f"{sys.version_info[0]}.{sys.version_info[1]}"}


class _FileBackend:
    def __init__(self, root: Path, *, trusted: bool) -> None:
        self.root = root
        self.where = str(root)
        self.trusted = trusted  # only this user writes it (the cache home): entries need no tag

    def get(self, digest: str) -> bytes | None:
        """The entry's bytes, or None when there is none. Only a plain file of at most ``MAX_ENTRY_BYTES``
        is read: a FIFO, a device, a link or a huge file in its place is a warned miss, never waited on
        or read to its end."""
        path = self.root / digest
        try:
            return read_regular(path, MAX_ENTRY_BYTES)
        except FileNotFoundError:
            return None
        except OSError as exc:
            _warn_once(self.where, "odd-file", "compile cache: ignoring %s (%s); compiling afresh", path,
                       exc.strerror or exc)
            return None

    def put(self, digest: str, data: bytes) -> bool:
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write(self.root / digest, data)
        return True


class _RedisBackend:
    PREFIX = "warmstart:compile:"
    trusted = False  # whoever can write to this Redis could otherwise run code here

    def __init__(self, url: str) -> None:
        self.url = url
        self.where = url.split("@")[-1]  # never log a password
        self._client: Any = None

    def _redis(self) -> Any:
        if self._client is None:
            import redis

            self._client = redis.Redis.from_url(self.url, socket_connect_timeout=2, socket_timeout=10)
        return self._client

    def get(self, digest: str) -> bytes | None:
        """The entry's bytes, or None; a value over ``MAX_ENTRY_BYTES`` (asked with STRLEN first) is a
        warned miss and is not transferred."""
        client, name = self._redis(), self.PREFIX + digest
        size = client.strlen(name)
        if size > MAX_ENTRY_BYTES:
            _warn_once(self.where, "too-large", "compile cache at %s: entry %s has %d bytes, more than the %d "
                       "allowed; compiling afresh", self.where, digest[:12], size, MAX_ENTRY_BYTES)
            return None
        value = client.get(name)
        if value is not None and len(value) > MAX_ENTRY_BYTES:  # grew between STRLEN and GET
            return None
        return value

    def put(self, digest: str, data: bytes) -> bool:
        return bool(self._redis().set(self.PREFIX + digest, data))


def _backend(settings: Settings, url: str | None) -> Any:
    url = url or settings.compile_cache
    local = settings.home / "compile"
    if not url:
        return _FileBackend(local, trusted=True)
    if url.startswith(("redis://", "rediss://", "unix://")):
        try:
            import redis  # noqa: F401
        except ImportError:
            raise ConfigError("WARMSTART_COMPILE_CACHE names Redis but the redis package is missing; "
                              "pip install 'warmstart[redis]'") from None
        return _RedisBackend(url)
    if url.startswith("file://") or url.startswith("/") or url.startswith("~"):
        root = Path(url.removeprefix("file://")).expanduser()
        return _FileBackend(root, trusted=os.path.realpath(root) == os.path.realpath(local))
    raise ConfigError(f"WARMSTART_COMPILE_CACHE={url!r}: use redis://HOST:PORT[/DB], rediss://…, or a directory")


class CompileCache:
    """One compile-cache entry: :meth:`load` before compiling, :meth:`save` after (or use it as a context).

    ``hit`` tells whether artifacts were loaded; ``saved`` whether new ones were stored.

    >>> cc = CompileCache("my-model", url="redis://127.0.0.1:6379/0")   # doctest: +SKIP
    """

    KIND = "compile"  # bound into the entry's tag: a compile-cache entry never verifies as an AOT package

    def __init__(self, key: str, *, url: str | None = None, settings: Settings | None = None) -> None:
        if not isinstance(key, str) or not key:
            raise ValueError("compile_cache needs a non-empty string key, e.g. the model name and mode")
        self.key = key
        self.env = environment()
        settings = settings or Settings.from_env()
        self.backend = _backend(settings, url)
        self.secret = settings.compile_cache_key
        self.trust_untagged = settings.compile_cache_trust
        # where entries go when the shared backend (Redis) is unreachable: this machine's cache home
        local = settings.home / "compile"
        self.local = None if isinstance(self.backend, _FileBackend) and self.backend.root == local \
            else _FileBackend(local, trusted=True)
        text = json.dumps({"key": key, **self.env, **self._key_extra()}, sort_keys=True)
        self.digest = hashlib.sha256(text.encode()).hexdigest()
        self.hit = False
        self.saved = False
        self.info: Any = None
        self._loaded_sha: str | None = None

    def _key_extra(self) -> dict[str, Any]:
        """More key material (subclasses); the entry's digest covers it besides key and environment."""
        return {}

    def _fetch(self) -> bytes | None:
        try:
            return self.backend.get(self.digest)
        except Exception as e:  # noqa: BLE001 - redis raises many types; the cache must never break a run
            if self.local is None:
                log.warning("compile cache at %s unreachable (%s: %s); compiling afresh", self.backend.where,
                            type(e).__name__, e)
                return None
            log.warning("compile cache at %s unreachable (%s: %s); using the local cache at %s",
                        self.backend.where, type(e).__name__, e, self.local.where)
            self.backend = self.local  # and store there too
            self.local = None
            return self._fetch()

    def fetch_payload(self) -> bytes | None:
        """The stored payload when there is a valid entry for this environment, else None (logged)."""
        raw = self._fetch()
        if raw is None:
            log.info("compile cache miss for %r", self.key)
            return None
        return self._unpack(raw)

    def store_payload(self, payload: bytes) -> bool:
        """Store ``payload`` under this entry's digest; True when stored. Never raises for cache problems."""
        sha = hashlib.sha256(payload).hexdigest()
        head = json.dumps({"key": self.key, "env": self.env, "sha256": sha}, sort_keys=True).encode()
        body = head + b"\n" + payload
        tag = NO_TAG if self.secret is None else entry_tag(self.secret, self.KIND, self.digest, body)
        while True:
            try:
                return self.backend.put(self.digest, MAGIC + tag + b"\n" + body)
            except Exception as e:  # noqa: BLE001
                if self.local is None:
                    log.warning("compile cache at %s unreachable (%s: %s); artifacts not saved",
                                self.backend.where, type(e).__name__, e)
                    return False
                log.warning("compile cache at %s unreachable (%s: %s); saving to the local cache at %s",
                            self.backend.where, type(e).__name__, e, self.local.where)
                self.backend, self.local = self.local, None

    def load(self) -> bool:
        """Load stored artifacts into torch's caches; True on a hit. Never raises for cache problems."""
        import torch

        payload = self.fetch_payload()
        if payload is None:
            return False
        try:
            self.info = torch.compiler.load_cache_artifacts(payload)
        except Exception as e:  # noqa: BLE001
            log.warning("compile cache entry for %r could not be loaded (%s); compiling afresh", self.key, e)
            return False
        self.hit = True
        self._loaded_sha = hashlib.sha256(payload).hexdigest()
        log.info("compile cache hit for %r (%d bytes from %s)", self.key, len(payload), self.backend.where)
        return True

    def _authentic(self, tag: bytes | None, body: bytes) -> bool:
        """Whether an entry of the current backend may be parsed and loaded (see the module's **Trust**)."""
        if self.backend.trusted:
            return True
        if self.secret is None:
            if not self.trust_untagged:
                _warn_once(self.backend.where, "no-key",
                           "compile cache at %s is not loaded: whoever can write to it could run code in this "
                           "process; set WARMSTART_COMPILE_CACHE_KEY (e.g. `openssl rand -hex 32`) on every "
                           "writer and reader, or WARMSTART_COMPILE_CACHE_TRUST=1 if only you can write to it; "
                           "compiling afresh", self.backend.where)
            return self.trust_untagged
        if tag is not None and hmac.compare_digest(tag, entry_tag(self.secret, self.KIND, self.digest, body)):
            return True
        _warn_once(self.backend.where, "bad-tag",
                   "compile cache entry for %r at %s has no valid tag for WARMSTART_COMPILE_CACHE_KEY "
                   "(written without the key, with another key, or altered); not loading it, compiling afresh",
                   self.key, self.backend.where)
        return False

    def _unpack(self, raw: bytes) -> bytes | None:
        if raw.startswith(MAGIC):
            tag, _, body = raw[len(MAGIC):].partition(b"\n")
        elif raw.startswith(MAGIC_V1):
            tag, body = None, raw[len(MAGIC_V1):]
        else:
            tag, body = None, b""
        # authenticated before anything else is even parsed
        if not self._authentic(tag, body):
            return None
        try:
            if not raw.startswith((MAGIC, MAGIC_V1)):
                raise ValueError("bad magic")
            head, sep, payload = body.partition(b"\n")
            if not sep:
                raise ValueError("no header line")
            meta = json.loads(head)
            if not isinstance(meta, dict):
                raise ValueError(f"header is a JSON {type(meta).__name__}, not an object")
            if not isinstance(meta.get("sha256"), str) or not isinstance(meta.get("env"), dict):
                raise ValueError("header lacks sha256 or env")
            if meta.get("key", self.key) != self.key:
                raise ValueError("header names another key")
            if hashlib.sha256(payload).hexdigest() != meta["sha256"]:
                raise ValueError("payload digest mismatch")
        except (ValueError, UnicodeDecodeError, RecursionError) as e:
            log.warning("compile cache entry for %r is corrupt (%s); ignoring it and compiling afresh", self.key,
                        str(e)[:200])
            return None
        env = meta["env"]
        if env != self.env:
            diff = ", ".join(f"{k} {env.get(k)!r} != {v!r}" for k, v in self.env.items() if env.get(k) != v)
            log.warning("compile cache entry for %r was made for another environment (%s); compiling afresh",
                        self.key, diff[:500])
            return None
        return payload

    def save(self) -> bool:
        """Store the artifacts this process compiled (skipped when nothing new); True when stored."""
        import torch

        result = torch.compiler.save_cache_artifacts()
        if not result or not result[0]:
            log.info("compile cache: nothing compiled under %r, nothing to save", self.key)
            return False
        payload = result[0]
        sha = hashlib.sha256(payload).hexdigest()
        if sha == self._loaded_sha:
            return False
        self.saved = self.store_payload(payload)
        if not self.saved:
            return False
        log.info("compile cache: saved %d bytes for %r to %s", len(payload), self.key, self.backend.where)
        return self.saved

    def __enter__(self) -> CompileCache:
        self.load()
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if exc_type is None:
            self.save()


def compile_cache(key: str, *, url: str | None = None, settings: Settings | None = None) -> CompileCache:
    """A :class:`CompileCache` for ``key``; use it as ``with compile_cache(key): ...``."""
    return CompileCache(key, url=url, settings=settings)
