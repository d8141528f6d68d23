"""Forward proxies, read from the environment as curl and requests read it."""

from __future__ import annotations

import base64
import ipaddress
import os
import urllib.parse

from .errors import ConfigError


def proxy_for(scheme: str, host: str) -> tuple[str, int, dict[str, str]] | None:
    """The forward proxy for ``scheme://host`` from the environment, as curl and requests read it:
    ``https_proxy`` / ``http_proxy``, then ``all_proxy`` (lower case first, then upper case), unless
    ``no_proxy`` lists the host (``*``, a name and its subdomains, an IP or a CIDR range). Loopback
    hosts never go through a proxy. Returns (proxy host, port, Proxy-Authorization header) or None."""
    def env(name: str) -> str:
        return os.environ.get(name) or os.environ.get(name.upper()) or ""

    names = [f"{scheme}_proxy", "all_proxy"]
    name = next((n for n in names if env(n)), None)
    if name is None or _is_loopback(host) or _no_proxy(host, env("no_proxy")):
        return None
    value = env(name).strip()
    p = urllib.parse.urlsplit(value if "://" in value else "http://" + value)
    try:
        port = p.port or 80
    except ValueError:
        port = 0
    if p.scheme != "http" or not p.hostname or not port:
        raise ConfigError(f"{name.upper()}={redact_userinfo(value)} is not supported: give an http:// proxy "
                          "(http://HOST:PORT, with user:password@ if it needs them), or unset it")
    headers = {}
    if p.username is not None:
        creds = f"{urllib.parse.unquote(p.username)}:{urllib.parse.unquote(p.password or '')}"
        headers["Proxy-Authorization"] = "Basic " + base64.b64encode(creds.encode()).decode()
    return p.hostname, port, headers


def redact_userinfo(url: str) -> str:
    """``http://user:secret@host`` -> ``http://***@host``."""
    head, sep, tail = url.rpartition("@")
    return f"{head.split('://')[0]}://***@{tail}" if sep and "://" in head else ("***@" + tail if sep else url)


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _no_proxy(host: str, value: str) -> bool:
    host = host.lower().rstrip(".")
    for entry in value.replace(" ", ",").split(","):
        entry = entry.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return True
        if "/" in entry:  # a CIDR range
            try:
                if ipaddress.ip_address(host) in ipaddress.ip_network(entry, strict=False):
                    return True
            except ValueError:
                pass
            continue
        if entry.startswith("[") and "]" in entry:  # [IPv6]:port
            entry = entry[1:entry.index("]")]
        elif entry.count(":") == 1:  # host:port: the port is not compared
            entry = entry.split(":")[0]
        entry = entry.lstrip(".").rstrip(".")
        if host == entry or host.endswith("." + entry):
            return True
    return False
