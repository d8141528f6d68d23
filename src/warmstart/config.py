"""Settings, read from the environment once at the edge and then passed explicitly.

>>> s = Settings.from_env({"WARMSTART_HOME": "/tmp/ws", "WARMSTART_MAX_SIZE": "2G"})
>>> s.home.as_posix(), s.max_size
('/tmp/ws', 2000000000)
"""

from __future__ import annotations

import dataclasses
import os
import re
import urllib.parse
from collections.abc import Mapping
from fractions import Fraction
from pathlib import Path

from .errors import ConfigError

DEFAULT_ENDPOINT = "https://huggingface.co"
#: the largest size any setting may name (SQLite's integers, ``posix_fallocate``'s offsets): 8 EiB
MAX_SIZE_VALUE = 2**63 - 1
#: WARMSTART_CHUNK_SIZE: from 1 MiB (the engine's floor) to 4 GiB
CHUNK_RANGE = (2**20, 2**32)

_UNITS = {
    "": 1, "B": 1,
    "K": 10**3, "KB": 10**3, "M": 10**6, "MB": 10**6, "G": 10**9, "GB": 10**9, "T": 10**12, "TB": 10**12,
    "KI": 2**10, "KIB": 2**10, "MI": 2**20, "MIB": 2**20, "GI": 2**30, "GIB": 2**30, "TI": 2**40, "TIB": 2**40,
}


def parse_size(text: str | int | None) -> int | None:
    """Parse ``200G``, ``1.5GiB``, ``500M`` or a plain byte count; ``None``/``""``/``0`` means no limit.

    >>> parse_size("1.5GiB"), parse_size("200G"), parse_size(None)
    (1610612736, 200000000000, None)
    """
    if text is None:
        return None
    if isinstance(text, int):
        return text or None
    m = re.fullmatch(r"\s*([0-9]{1,30}(?:\.[0-9]{1,30})?)\s*([A-Za-z]*)\s*", text, re.ASCII)
    if not m or m.group(2).upper() not in _UNITS:
        raise ConfigError(f"invalid size {text[:40]!r}: use a number with an optional unit, e.g. 200G, 1.5GiB, "
                          "500M")
    value = int(Fraction(m.group(1)) * _UNITS[m.group(2).upper()])  # exact: no float overflow or rounding
    if value > MAX_SIZE_VALUE:
        raise ConfigError(f"size {text[:40]!r} is too large: the largest is 8 EiB; use e.g. 200G")
    return value or None


def format_size(n: float | None, *, binary: bool = False) -> str:
    """A byte count for people: powers of 1000 (``KB``, ``MB``…) or, with ``binary``, of 1024 (``KiB``…);
    None is ``unlimited`` (no budget).

    >>> format_size(1234567), format_size(999), format_size(64 * 2**20, binary=True), format_size(None)
    ('1.2 MB', '999 B', '64.0 MiB', 'unlimited')
    """
    if n is None:
        return "unlimited"
    base, units = (1024, ("B", "KiB", "MiB", "GiB", "TiB")) if binary else (1000, ("B", "KB", "MB", "GB", "TB"))
    if abs(n) < base:
        return f"{n:.0f} B"
    for unit in units[1:-1]:
        n /= base
        if abs(n) < base:
            return f"{n:.1f} {unit}"
    return f"{n / base:.1f} {units[-1]}"


def _size(env: Mapping[str, str], name: str, hi: int = MAX_SIZE_VALUE, lo: int = 0) -> int | None:
    """``parse_size`` of one variable, with its name and range in the error."""
    raw = env.get(name)
    try:
        value = parse_size(raw)
    except ConfigError as exc:
        raise ConfigError(f"{name}: {exc}") from None
    if value is not None and not lo <= value <= hi:
        raise ConfigError(f"{name}={raw[:40]!r} is out of range; set a size from {lo} to {hi} bytes")
    return value


def check_endpoint(url: str, name: str = "HF_ENDPOINT") -> str:
    """An origin URL setting must be ``http(s)://HOST[:PORT][/PATH]``; returns it without a trailing slash.

    >>> check_endpoint("http://127.0.0.1:8080/")
    'http://127.0.0.1:8080'
    >>> check_endpoint("ftp://x")
    Traceback (most recent call last):
    ...
    warmstart.errors.ConfigError: HF_ENDPOINT='ftp://x' is not an http(s) URL with a host; set it to e.g. https://huggingface.co, or unset it
    """
    try:
        p = urllib.parse.urlsplit(url)
        p.port  # noqa: B018 - raises ValueError for a malformed port
        ok = p.scheme in ("http", "https") and bool(p.hostname) and not any(c.isspace() or ord(c) < 32
                                                                             for c in url)
    except ValueError:
        ok = False
    if not ok:
        raise ConfigError(f"{name}={url[:80]!r} is not an http(s) URL with a host; set it to e.g. "
                          f"{DEFAULT_ENDPOINT}, or unset it")
    return url.rstrip("/")


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything warmstart reads from its environment. Build with :meth:`from_env`; override with
    :func:`dataclasses.replace`."""

    home: Path
    max_size: int | None = None
    offline: bool = False
    endpoint: str = DEFAULT_ENDPOINT
    token: str | None = dataclasses.field(default=None, repr=False)  # HF_TOKEN: never printed
    quiet: bool = False
    memory_dir: Path | None = None
    memory_max_size: int | None = None
    shared_dir: Path | None = None
    max_connections: int = 64
    min_connections: int = 16
    chunk_size: int = 16 * 2**20
    #: a body (or a response's headers) that delivers no byte for this long is dropped and retried
    stall_timeout: float = 30.0
    #: ... and so is one slower than ``min_rate`` bytes/s averaged over ``stall_timeout``
    min_rate: int = 1024
    connect_timeout: float = 5.0
    #: the largest metadata answer read (the Hub's revision JSON, registry manifests)
    metadata_limit: int = 64 * 2**20
    compile_cache: str | None = None
    #: HMAC key authenticating compile-cache / AOT entries in Redis or a shared directory (never printed)
    compile_cache_key: bytes | None = dataclasses.field(default=None, repr=False)
    compile_cache_trust: bool = False  # load untagged entries from Redis / a shared directory (opt-in)
    insecure_registries: tuple[str, ...] = ()  # OCI registries reached over plain HTTP (loopback always is)
    registry_auth_file: Path | None = None  # docker-style config.json with "auths" for OCI registries
    oci_auth_hosts: tuple[str, ...] = ()  # token services (not the registry's host) that may get its password
    agent: str = ""  # WARMSTART_AGENT: the node agent's socket or http://HOST:PORT ("" = <home>/agent.sock if any)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        home = env.get("WARMSTART_HOME") or os.path.join(
            env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "warmstart"
        )
        token = env.get("HF_TOKEN") or env.get("HUGGING_FACE_HUB_TOKEN") or _stored_token(env)
        return cls(
            home=Path(home).expanduser(),
            max_size=_size(env, "WARMSTART_MAX_SIZE"),
            offline=_truthy(env.get("WARMSTART_OFFLINE")) or _truthy(env.get("HF_HUB_OFFLINE")),
            endpoint=check_endpoint(env.get("HF_ENDPOINT") or DEFAULT_ENDPOINT),
            token=token,
            quiet=_truthy(env.get("WARMSTART_QUIET")),
            memory_dir=Path(env["WARMSTART_MEMORY_DIR"]) if env.get("WARMSTART_MEMORY_DIR") else None,
            memory_max_size=_size(env, "WARMSTART_MEMORY_MAX_SIZE"),
            shared_dir=Path(env["WARMSTART_SHARED_DIR"]) if env.get("WARMSTART_SHARED_DIR") else None,
            max_connections=_int(env, "WARMSTART_MAX_CONNECTIONS", 64, 1, 512),
            min_connections=_int(env, "WARMSTART_MIN_CONNECTIONS", 16, 1, 512),
            chunk_size=_size(env, "WARMSTART_CHUNK_SIZE", CHUNK_RANGE[1], CHUNK_RANGE[0]) or 16 * 2**20,
            stall_timeout=_seconds(env, "WARMSTART_STALL_TIMEOUT", 30.0),
            min_rate=(_size(env, "WARMSTART_MIN_RATE", 2**30) or 0) if env.get("WARMSTART_MIN_RATE") else 1024,
            connect_timeout=_seconds(env, "WARMSTART_CONNECT_TIMEOUT", 5.0),
            metadata_limit=_size(env, "WARMSTART_METADATA_LIMIT", 2**40, 1024) or 64 * 2**20,
            compile_cache=env.get("WARMSTART_COMPILE_CACHE") or None,
            compile_cache_key=_secret_key(env.get("WARMSTART_COMPILE_CACHE_KEY")),
            compile_cache_trust=_truthy(env.get("WARMSTART_COMPILE_CACHE_TRUST")),
            insecure_registries=tuple(h.strip() for h in env.get("WARMSTART_INSECURE_REGISTRIES", "").split(",")
                                      if h.strip()),
            registry_auth_file=_auth_file(env),
            oci_auth_hosts=tuple(h.strip() for h in env.get("WARMSTART_OCI_AUTH_HOSTS", "").split(",") if h.strip()),
            agent=env.get("WARMSTART_AGENT", "").strip(),
        )


def _secret_key(raw: str | None) -> bytes | None:
    """``WARMSTART_COMPILE_CACHE_KEY``: hex (as ``openssl rand -hex 32`` prints) or any other string's UTF-8.

    >>> _secret_key("00" * 32) == bytes(32), _secret_key("correct horse battery staple")[:7]
    (True, b'correct')
    """
    text = (raw or "").strip()
    if not text:
        return None
    key = bytes.fromhex(text) if re.fullmatch(r"(?:[0-9a-fA-F]{2})+", text) else text.encode()
    if len(key) < 16:
        raise ConfigError(f"WARMSTART_COMPILE_CACHE_KEY is {len(key)} bytes, too short to authenticate "
                          "anything; use at least 16, e.g. the output of `openssl rand -hex 32`")
    return key


def _auth_file(env: Mapping[str, str]) -> Path | None:
    """``REGISTRY_AUTH_FILE`` (as podman), else ``$DOCKER_CONFIG/config.json``, else ~/.docker/config.json."""
    if env.get("REGISTRY_AUTH_FILE"):
        return Path(env["REGISTRY_AUTH_FILE"]).expanduser()
    base = env.get("DOCKER_CONFIG") or os.path.join(os.path.expanduser("~"), ".docker")
    return Path(base) / "config.json"


def _stored_token(env: Mapping[str, str]) -> str | None:
    """The token ``huggingface-cli login`` stored (``HF_TOKEN_PATH``, else ``$HF_HOME/token``)."""
    hf_home = env.get("HF_HOME") or os.path.join(
        env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface")
    try:
        with open(env.get("HF_TOKEN_PATH") or os.path.join(hf_home, "token")) as fh:
            return fh.read().strip() or None
    except OSError:
        return None


def _seconds(env: Mapping[str, str], name: str, default: float, lo: float = 0.05, hi: float = 86400.0) -> float:
    raw = env.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not lo <= value <= hi:  # NaN fails too
        raise ConfigError(f"{name}={raw[:40]!r} is not a number of seconds from {lo} to {hi:.0f}; e.g. {default:g}")
    return value


def _int(env: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = env.get(name)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer; set a number from {lo} to {hi}") from None
    if not lo <= value <= hi:
        raise ConfigError(f"{name}={value} is out of range; set a number from {lo} to {hi}")
    return value
