"""Backend-specific tests reuse the conformance suite's origins (moto behind a proxy, the registry)."""

from tests.conformance.conftest import auth_registry, home, moto_proxy, registry, s3_bucket  # noqa: F401
