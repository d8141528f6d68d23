"""The registry maps a scheme to the source that declares it (``Source.schemes``), imports sources
lazily, and turns text into a Ref whose printing, pinning and key follow that source's grammar."""

from __future__ import annotations

import subprocess
import sys

import pytest

from warmstart.errors import ConfigError, RefError
from warmstart.refs import Malformed, Ref
from warmstart.sources import registry
from warmstart.sources.base import Listing, Source


class DemoSource(Source):
    """A source that exists only here: one file and one registry line, nothing else."""

    schemes = ("demo", "demo+x")
    forms = ("demo://NAME",)
    default_revision = "tip"

    @classmethod
    def parse_ref(cls, scheme: str, body: str, text: str, bare: bool) -> Ref:
        loc, rev = cls.split_revision(body)
        if not loc.isalnum():
            raise Malformed("a demo NAME is letters and digits")
        return cls.make_ref("demo", loc, rev)

    @classmethod
    def format_ref(cls, ref: Ref) -> str:
        return f"demo://{ref.location}" + (f"~{ref.revision}" if ref.revision else "")

    @classmethod
    def is_pinned(cls, ref: Ref) -> bool:
        return (ref.revision or "").startswith("v")

    def resolve(self, ref: Ref) -> Listing:
        raise NotImplementedError


@pytest.fixture
def demo_registered(monkeypatch):
    lines = list(registry.SOURCES)
    lines.insert(-1, f"{__name__}:DemoSource")
    monkeypatch.setattr(registry, "SOURCES", tuple(lines))
    monkeypatch.setattr(registry, "_by_scheme", {})
    monkeypatch.setattr(registry, "_imported", {})


def test_a_source_declares_its_schemes_and_owns_its_grammar(demo_registered):
    ref = registry.parse("demo+x://model1@v2")
    assert ref.grammar is DemoSource and registry.backend_for("demo+x") is DemoSource
    assert (str(ref), ref.key, ref.pinned, ref.default_revision) == ("demo://model1~v2", "demo://model1", True, "tip")
    assert registry.parse("demo://model1", revision="main").pinned is False
    assert "demo+x" in registry.schemes()
    with pytest.raises(RefError) as err:
        registry.parse("demo://no/such")
    msg = str(err.value)
    assert msg.startswith("invalid reference 'demo://no/such': a demo NAME is letters and digits; expected hf://")
    assert ", demo://NAME, file:///PATH or a local path" in msg  # its form, in its registry place


def test_an_unknown_scheme_is_a_grammar_error_and_not_a_source(demo_registered):
    with pytest.raises(RefError, match=r"unknown scheme 'nope'; expected hf://ORG/NAME"):
        registry.parse("nope://x")
    with pytest.raises(RefError, match=r"no source backend for scheme 'nope'; known: demo, demo\+x, file"):
        registry.backend_for("nope")


def test_a_hub_ref_imports_the_hub_source_only():
    code = ("import sys; from warmstart.sources.registry import parse; r = parse('hf://o/n@' + 'a' * 40); "
            "assert r.pinned; print(' '.join(sorted(m for m in sys.modules if m.startswith('warmstart.'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert [m for m in out if m.startswith("warmstart.sources.")] == [
        "warmstart.sources.base", "warmstart.sources.hf", "warmstart.sources.registry"], out
    assert "warmstart._http" not in out  # a pinned ref served from the cache needs no HTTP client


def test_refs_parse_without_a_sources_optional_dependency(monkeypatch):
    monkeypatch.setitem(sys.modules, "boto3", None)
    monkeypatch.setattr(registry, "_by_scheme", {})
    monkeypatch.setattr(registry, "_imported", {})
    ref = registry.parse("s3://models/llama@3HL4kqtJlcpX")  # ls, rm and a cached pinned pull need no boto3
    assert ref.pinned and ref.key == "s3://models/llama"
    with pytest.raises(ConfigError, match=r"^the s3:// backend needs boto3: pip install 'warmstart\[s3\]'$"):
        registry.backend_for("s3")


def test_a_ref_is_made_by_a_grammar():
    with pytest.raises(TypeError, match="registry.parse"):
        Ref("hf", "org/name")


def test_a_local_path_imports_the_local_source_only(tmp_path):
    code = (f"import sys; from warmstart.sources.registry import parse; parse({str(tmp_path)!r}); "
            "print(' '.join(sorted(m for m in sys.modules if m.startswith('warmstart.sources.'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["warmstart.sources.base", "warmstart.sources.local",
                   "warmstart.sources.registry"], out


def test_a_registry_line_must_name_the_schemes_its_class_declares(monkeypatch):
    monkeypatch.setattr(registry, "SOURCES", (f"{__name__}:DemoSource demo",))
    monkeypatch.setattr(registry, "_by_scheme", {})
    monkeypatch.setattr(registry, "_imported", {})
    with pytest.raises(ConfigError, match="other schemes than DemoSource.schemes"):
        registry.parse("demo://model1")
