"""Forward proxies from the environment (HTTP_PROXY, HTTPS_PROXY, ALL_PROXY, NO_PROXY), as corporate
networks require: the client reaches a name only the proxy can resolve, so its traffic provably went
through the proxy."""

from __future__ import annotations

import pytest

import warmstart
from warmstart import _http
from warmstart.errors import ConfigError

from ..servers.forward_proxy import ForwardProxy
from ..servers.tls import TlsServer, self_signed


@pytest.fixture
def no_proxy_env(monkeypatch):
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    return monkeypatch


def test_plain_http_pull_through_a_proxy_with_credentials(http_origin, ws_home, no_proxy_env):
    data = b"weights" * 100_000
    http_origin.put("model/w.bin", data)
    port = http_origin.url("x").split(":")[2].split("/")[0]
    with ForwardProxy(hosts={"origin.test": "127.0.0.1"}, auth="alice:s3cr:et") as proxy:
        no_proxy_env.setenv("HTTP_PROXY", proxy.url.replace("http://", "http://alice:s3cr%3Aet@"))
        snap = warmstart.pull(f"http://origin.test:{port}/model/w.bin")
        assert snap.files[0].blob.read_bytes() == data
        assert proxy.seen and all(target.startswith(f"http://origin.test:{port}/") for _, target in proxy.seen)
        # NO_PROXY takes the host out (here it would not resolve at all without the proxy)
        no_proxy_env.setenv("NO_PROXY", ".test")
        with pytest.raises(OSError):  # the name does not resolve here
            _http.Client(timeout=2).request("GET", f"http://origin.test:{port}/model/w.bin")


def test_wrong_proxy_credentials_get_407(http_origin, no_proxy_env):
    http_origin.put("a.bin", b"a")
    port = http_origin.url("x").split(":")[2].split("/")[0]
    with ForwardProxy(hosts={"origin.test": "127.0.0.1"}, auth="alice:right") as proxy:
        no_proxy_env.setenv("http_proxy", proxy.url.replace("http://", "http://alice:wrong@"))
        resp = _http.Client(timeout=5).request("GET", f"http://origin.test:{port}/a.bin")
        assert resp.status == 407


def test_https_goes_through_a_connect_tunnel(tmp_path, no_proxy_env):
    cert, key = self_signed(tmp_path, "origin.test")
    with TlsServer(cert, key, b"secret") as server:
        url = f"https://origin.test:{server.port}/w.bin"
        try:
            with ForwardProxy(hosts={"origin.test": "127.0.0.1"}) as proxy:
                no_proxy_env.setenv("HTTPS_PROXY", proxy.url)
                _http.trust_ca_bundle(url, str(cert))  # TLS is end to end: the origin's certificate is checked
                resp = _http.Client(timeout=5).request("GET", url)
                assert resp.status == 200 and resp.read() == b"secret"
                assert proxy.seen == [("CONNECT", f"origin.test:{server.port}")]
        finally:
            _http._host_contexts.pop(_http.host_key(url), None)


def test_proxy_rules(no_proxy_env):
    assert _http.proxy_for("https", "huggingface.co") is None  # nothing set
    no_proxy_env.setenv("ALL_PROXY", "proxy.corp:3128")
    assert _http.proxy_for("https", "huggingface.co") == ("proxy.corp", 3128, {})
    no_proxy_env.setenv("https_proxy", "http://u:p%40ss@proxy.corp")
    host, port, headers = _http.proxy_for("https", "cdn.hf.co")
    assert (host, port) == ("proxy.corp", 80)
    assert headers == {"Proxy-Authorization": "Basic dTpwQHNz"}  # u:p@ss
    for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost", "a.localhost"):
        assert _http.proxy_for("https", host) is None  # loopback never goes through a proxy
    no_proxy_env.setenv("NO_PROXY", "internal.corp, .s3.amazonaws.com,10.0.0.0/8,registry:5000")
    for host in ("internal.corp", "x.internal.corp", "b.s3.amazonaws.com", "10.1.2.3", "registry"):
        assert _http.proxy_for("https", host) is None, host
    for host in ("notinternal.corp", "11.0.0.1", "huggingface.co"):
        assert _http.proxy_for("https", host) is not None, host
    no_proxy_env.setenv("NO_PROXY", "*")
    assert _http.proxy_for("https", "huggingface.co") is None
    no_proxy_env.delenv("NO_PROXY")
    no_proxy_env.setenv("https_proxy", "socks5://u:secret@proxy.corp:1080")
    with pytest.raises(ConfigError, match=r"HTTPS_PROXY=socks5://\*\*\*@proxy.corp:1080 is not supported") as err:
        _http.proxy_for("https", "huggingface.co")
    assert "secret" not in str(err.value)


