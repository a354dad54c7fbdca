"""wire.settings: the settings base (old names read with a warning, defaults, error lines)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import ClassVar

import pytest
from pydantic import Field, ValidationError

from manager.scheduler import SchedulerConfig
from manager.settings import ManagerSettings
from proxy.settings import McpBridgeSettings, ProxySettings
from wire.settings import HomelabSettings, SettingRenamed

GOOD = "k9F2-pQx7_LmZr4Ws8Tb"


class Knobs(HomelabSettings):
    renamed: ClassVar[Mapping[str, str]] = {"HOMELAB_OLD_KNOB": "new_knob"}
    retired: ClassVar[Mapping[str, str]] = {"HOMELAB_GONE": "it is fixed now"}

    new_knob: int = Field(default=1, gt=0, description="d")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HOMELAB_OLD_KNOB", "HOMELAB_NEW_KNOB", "HOMELAB_GONE"):
        monkeypatch.delenv(name, raising=False)


def test_an_old_name_is_read_with_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOMELAB_OLD_KNOB", "5")
    with pytest.warns(SettingRenamed, match="HOMELAB_OLD_KNOB is renamed HOMELAB_NEW_KNOB"):
        assert Knobs().new_knob == 5


def test_the_new_name_wins_over_the_old(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOMELAB_OLD_KNOB", "5")
    monkeypatch.setenv("HOMELAB_NEW_KNOB", "7")
    assert Knobs().new_knob == 7


def test_a_retired_name_is_named_in_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOMELAB_GONE", "1")
    with pytest.warns(SettingRenamed, match="HOMELAB_GONE is no longer read: it is fixed now"):
        assert Knobs().new_knob == 1


def test_a_bad_value_under_the_old_name_is_reported_under_the_new(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HOMELAB_OLD_KNOB", "0")
    with pytest.warns(SettingRenamed), pytest.raises(ValidationError) as caught:
        Knobs()
    assert Knobs.describe(caught.value).startswith("  HOMELAB_NEW_KNOB: Input should be greater")


def test_describe_never_shows_the_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOMELAB_MANAGER_TOKEN", "Qz7wXv")
    with pytest.raises(ValidationError) as caught:
        ManagerSettings()
    text = ManagerSettings.describe(caught.value)
    assert text.startswith("  HOMELAB_MANAGER_TOKEN: ") and "Qz7wXv" not in text


def test_the_proxy_reads_its_old_body_and_connection_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HOMELAB_MANAGER_TOKEN", GOOD)
    monkeypatch.setenv("HOMELAB_MAX_BODY_BYTES", "4096")
    monkeypatch.setenv("HOMELAB_MAX_CONNECTIONS", "99")
    with pytest.warns(SettingRenamed):
        settings = ProxySettings()
    assert (settings.proxy_max_body_bytes, settings.proxy_max_connections) == (4096, 99)


def test_the_manager_warns_that_it_no_longer_reads_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOMELAB_MANAGER_TOKEN", GOOD)
    monkeypatch.setenv("HOMELAB_MAX_BODY_BYTES", "4096")
    with pytest.warns(SettingRenamed, match="HOMELAB_MAX_BODY_BYTES is no longer read"):
        ManagerSettings()


def test_the_mcp_relay_reads_its_key_under_the_old_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HOMELAB_MCP_KEY", raising=False)
    monkeypatch.setenv("HOMELAB_API_KEY", "k-9Fq2Lm7Xc4VbNw1")
    with pytest.warns(SettingRenamed, match="HOMELAB_API_KEY is renamed HOMELAB_MCP_KEY"):
        key = McpBridgeSettings().mcp_key
    assert key is not None and key.get_secret_value() == "k-9Fq2Lm7Xc4VbNw1"


def test_the_scheduler_takes_its_defaults_from_the_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ManagerSettings.model_fields:
        monkeypatch.delenv(ManagerSettings.env_name(name), raising=False)
    settings = ManagerSettings(manager_token=GOOD)
    # advertise_host is derived (advertise_host, else model_host); None: the runtime's.
    derived = dataclasses.replace(SchedulerConfig.from_settings(settings), advertise_host=None)
    assert SchedulerConfig() == derived


def test_the_manager_client_and_lease_pool_take_their_defaults_from_the_settings() -> None:
    import inspect

    from proxy.manager_client import ManagerClient

    params = inspect.signature(ManagerClient.__init__).parameters
    for arg, field in {
        "models_ttl": "models_cache_ttl",
        "connect_timeout": "connect_timeout",
        "outage_window": "manager_outage_window",
        "lease_read_timeout": "lease_read_timeout",
        "events_read_timeout": "events_read_timeout",
    }.items():
        assert params[arg].default == ProxySettings.default(field), arg
    from proxy.lease_pool import LeasePool

    linger = inspect.signature(LeasePool.__init__).parameters["linger"].default
    assert linger == ProxySettings.default("lease_linger")


def test_default_refuses_a_required_or_unknown_setting() -> None:
    with pytest.raises(KeyError):
        ManagerSettings.default("manager_token")
    with pytest.raises(KeyError):
        ManagerSettings.default("no_such_setting")
