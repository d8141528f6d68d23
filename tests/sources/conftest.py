"""Backend-specific tests reuse the conformance suite's origins (moto behind a proxy, the registry)."""

import pytest

from tests.conformance.conftest import auth_registry, home, moto_proxy, registry, s3_bucket, s3_env  # noqa: F401


@pytest.fixture
def s3(s3_bucket, moto_proxy, monkeypatch, home):  # noqa: F811
    """moto's boto3 client, with the AWS environment pointing warmstart at moto through the proxy."""
    moto_proxy.reset()
    for k, v in s3_env(moto_proxy.endpoint).items():
        monkeypatch.setenv(k, v)
    yield s3_bucket
    moto_proxy.reset()
