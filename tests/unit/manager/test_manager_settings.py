"""ManagerSettings: HOMELAB_ environment names, defaults, and a token that must be real."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from manager.settings import ManagerSettings

GOOD = "k9F2-pQx7_LmZr4Ws8Tb"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    import os

    for key in list(os.environ):
        if key.startswith("HOMELAB_"):
            monkeypatch.delenv(key)


def test_reads_homelab_variables(monkeypatch):
    monkeypatch.setenv("HOMELAB_MANAGER_TOKEN", GOOD)
    monkeypatch.setenv("HOMELAB_MANAGER_PORT", "9100")
    monkeypatch.setenv("HOMELAB_RUNTIME", "process")
    monkeypatch.setenv("HOMELAB_QUEUE_LIMIT", "3")
    monkeypatch.setenv("HOMELAB_BATCH_BOUND", "2")
    monkeypatch.setenv("HOMELAB_ADVERTISE_HOST", "192.168.1.20")
    monkeypatch.setenv("HOMELAB_MODELS_FILE", "/etc/homelab/models.json")
    settings = ManagerSettings()
    assert settings.manager_token.get_secret_value() == GOOD
    assert (settings.manager_port, settings.runtime) == (9100, "process")
    assert (settings.queue_limit, settings.batch_bound) == (3, 2)
    assert settings.advertised_host() == "192.168.1.20"
    assert str(settings.models_file) == "/etc/homelab/models.json"
    assert GOOD not in repr(settings)  # the secret is not printed
    assert settings.hf_token is None
    monkeypatch.setenv("HOMELAB_HF_TOKEN", "hf_abcdefghijklmnop")
    assert ManagerSettings().hf_token.get_secret_value() == "hf_abcdefghijklmnop"


def test_defaults(monkeypatch):
    monkeypatch.setenv("HOMELAB_MANAGER_TOKEN", GOOD)
    settings = ManagerSettings()
    assert settings.manager_port == 8090
    assert settings.runtime == "docker"
    assert settings.model_host == "127.0.0.1"
    assert settings.advertised_host() == "127.0.0.1"
    assert settings.queue_limit > 0 and settings.queue_timeout > 0 and settings.lease_ttl > 0


def test_token_is_required():
    with pytest.raises(ValidationError, match="manager_token"):
        ManagerSettings()


@pytest.mark.parametrize(
    "token",
    [
        "short-Tok3n",
        "changemechangeme",
        "CHANGE-ME-please-now",
        "my-secret-value-12345",
        "token-0123456789abc",
        "xxxxxxxxxxxxxxxxxxxx",
        "abababababababababab",
        "your-password-goes-here",
    ],
)
def test_weak_or_placeholder_tokens_are_refused(token):
    with pytest.raises(ValidationError) as info:
        ManagerSettings(manager_token=token)
    assert "python -m wire.tokens new" in str(info.value)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("manager_port", 0),
        ("runtime", "podman"),
        ("batch_bound", 0),
        ("queue_limit", 0),
        ("lease_ttl", 0),
        ("model_host", "bad host; rm -rf /"),
    ],
)
def test_bad_values_are_refused(name, value):
    with pytest.raises(ValidationError, match=name):
        ManagerSettings(manager_token=GOOD, **{name: value})


def test_instance_reaches_the_docker_runtime(monkeypatch):
    """HOMELAB_INSTANCE was read by DockerRuntime but missing from the settings."""
    from manager.docker_runtime import DockerRuntime

    monkeypatch.setenv("HOMELAB_MANAGER_TOKEN", GOOD)
    monkeypatch.setenv("HOMELAB_INSTANCE", "lab-2")
    settings = ManagerSettings()
    assert settings.instance == "lab-2"
    assert DockerRuntime(settings)._instance == "lab-2"
    monkeypatch.setenv("HOMELAB_INSTANCE", "bad name; rm")
    with pytest.raises(ValidationError):
        ManagerSettings()
