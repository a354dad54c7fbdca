"""The proxy's catalogue (proxy/catalogue.py): strict validation naming file, key and reason,
key files, and the fallback choice (proxy/routing.py `order`), a pure function."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from proxy.catalogue import LOCAL_HOST, Catalogue, CatalogueError, load_catalogue, parse_catalogue
from proxy.routing import Route, Router, Target, View, order, view
from wire.models import ModelStatus


def _key(tmp_path: Path, text: str = "sk-remote-0123456789", mode: int = 0o600) -> Path:
    path = tmp_path / "cloud.key"
    path.write_text(text + "\n")
    path.chmod(mode)
    return path


def _file(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "catalogue.json"
    path.write_text(json.dumps(data))
    return path


def _good(key_file: str = "cloud.key") -> dict[str, Any]:
    return {
        "hosts": {"gpu-pc": {}},
        "endpoints": {
            "cloud": {
                "base_url": "https://api.example.com/v1/",
                "key_file": key_file,
                "models": {
                    "cloud-chat": {"type": "text", "tools": True},
                    "cloud-embed": {"type": "embedding"},
                },
            },
            "lan": {
                "base_url": "http://10.0.0.7:8000/v1",
                "models": {"lan-chat": {"type": "text"}},
            },
        },
        "fallbacks": {"smollm2": {"then": ["lan-chat", "cloud-chat"], "max_queue": 4}},
    }


def test_a_good_catalogue_loads_with_its_key_read_from_the_file(tmp_path: Path) -> None:
    _key(tmp_path)
    cat = load_catalogue(_file(tmp_path, _good()))
    assert cat.host == "gpu-pc"
    cloud = cat.endpoints["cloud"]
    assert cloud.base_url == "https://api.example.com/v1"  # the slash stripped
    assert cloud.headers() == {"Authorization": "Bearer sk-remote-0123456789"}
    assert "sk-remote" not in repr(cloud)
    assert cat.endpoints["lan"].headers() == {}
    assert cat.remote("cloud-embed") == (cloud, cloud.models["cloud-embed"])
    assert cat.fallbacks["smollm2"].max_queue == 4


def test_no_catalogue_is_an_empty_one_on_the_local_host() -> None:
    cat = load_catalogue(None)
    assert cat == Catalogue() and cat.host == LOCAL_HOST
    router = Router(cat)
    assert router.routes == {} and router.remote == {}
    assert router.target("m") == Target("m", LOCAL_HOST)


@pytest.mark.parametrize(
    ("change", "key", "reason"),
    [
        (lambda d: d.update(extra=1), "extra", "unknown key"),
        (
            lambda d: d["endpoints"]["cloud"].update(api_key="sk-x"),
            "endpoints.cloud.api_key",
            "unknown key",
        ),
        (
            lambda d: d["endpoints"]["cloud"].update(base_url="ftp://x"),
            "endpoints.cloud.base_url",
            "pattern",
        ),
        (
            lambda d: d["endpoints"]["cloud"].update(models={}),
            "endpoints.cloud.models",
            "at least 1",
        ),
        (
            lambda d: d["endpoints"]["cloud"]["models"].update({"x": {"type": "image"}}),
            "endpoints.cloud.models.x.type",
            "'text' or 'embedding'",
        ),
        (
            lambda d: d["endpoints"]["lan"]["models"].update({"cloud-chat": {"type": "text"}}),
            "endpoints.lan.models.cloud-chat",
            "already served by endpoint 'cloud'",
        ),
        (lambda d: d["hosts"].update(second={}), "hosts.second.url", "only one host"),
        (
            lambda d: d["hosts"].update(second={"url": "http://10.0.0.2:8090"}),
            "hosts.second.token_file",
            "required with `url`",
        ),
        (
            lambda d: d["hosts"].update(second={"url": "http://h:1", "mac": "zz"}),
            "hosts.second.mac",
            "should match pattern",
        ),
        (
            lambda d: d["hosts"].update(second={"sleepable": True}),
            "hosts.second.url",
            "only one host",
        ),
        (lambda d: d["fallbacks"].update(a={"then": []}), "fallbacks.a.then", "at least 1"),
        (
            lambda d: d["fallbacks"].update(a={"then": ["a"]}),
            "fallbacks.a.then",
            "names a model twice",
        ),
        (
            lambda d: d["fallbacks"].update(a={"then": ["cloud-chat", "cloud-embed"]}),
            "fallbacks.a.then",
            "mixes model types (embedding, text)",
        ),
        (
            lambda d: d["fallbacks"].update({"bad name!": {"then": ["x"]}}),
            "fallbacks.bad name!",
            "pattern",
        ),
        (
            lambda d: d["fallbacks"]["smollm2"].update(max_queue=-1),
            "fallbacks.smollm2.max_queue",
            "greater",
        ),
        (
            lambda d: d["fallbacks"].update(cloud={"then": ["x"]}),
            "fallbacks",
            "also a host or endpoint",
        ),
    ],
)
def test_a_bad_catalogue_names_the_file_the_key_and_the_reason(
    tmp_path: Path, change: Any, key: str, reason: str
) -> None:
    _key(tmp_path)
    data = _good()
    change(data)
    path = _file(tmp_path, data)
    with pytest.raises(CatalogueError) as err:
        load_catalogue(path)
    assert err.value.file == str(path)
    assert err.value.key == key
    assert reason in err.value.reason
    assert str(err.value).startswith(f"{path}: key '{key}': ")


def test_a_key_file_must_exist_be_private_and_hold_one_key(tmp_path: Path) -> None:
    path = _file(tmp_path, _good())
    with pytest.raises(CatalogueError, match="cannot be read") as err:
        load_catalogue(path)
    assert err.value.key == "endpoints.cloud.key_file"
    _key(tmp_path, mode=0o644)
    with pytest.raises(CatalogueError, match="readable by others"):
        load_catalogue(path)
    _key(tmp_path, text="two words")
    with pytest.raises(CatalogueError, match="one key on one line"):
        load_catalogue(path)
    absolute = _key(tmp_path)
    assert load_catalogue(_file(tmp_path, _good(str(absolute)))).endpoints["cloud"].api_key


def test_unreadable_or_broken_json_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(CatalogueError, match="cannot be read"):
        load_catalogue(tmp_path / "absent.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(CatalogueError, match="is not valid JSON"):
        load_catalogue(broken)
    with pytest.raises(CatalogueError, match="top level must be a JSON object"):
        parse_catalogue([], "x.json")


# -- the fallback choice -------------------------------------------------------------------


def _router(tmp_path: Path) -> Router:
    _key(tmp_path)
    return Router(load_catalogue(_file(tmp_path, _good())))


def _names(targets: list[Target]) -> list[str]:
    return [t.served_by for t in targets]


def test_the_router_tables(tmp_path: Path) -> None:
    router = _router(tmp_path)
    route = router.routes["smollm2"]
    assert [t.served_by for t in route.targets] == [
        "smollm2@gpu-pc",
        "lan-chat@lan",
        "cloud-chat@cloud",
    ]
    assert route.max_queue == 4
    assert "cloud-chat" not in router.routes  # no fallbacks: one lookup, no route
    assert router.target("cloud-chat").endpoint is router.catalogue.endpoints["cloud"]


@pytest.mark.parametrize(
    ("host_up", "queue", "health", "expected"),
    [
        # all well: the catalogue's order
        (True, 0, {}, ["smollm2@gpu-pc", "lan-chat@lan", "cloud-chat@cloud"]),
        # the host's manager is unreachable: the remotes first, the host last
        (False, 0, {}, ["lan-chat@lan", "cloud-chat@cloud", "smollm2@gpu-pc"]),
        # the queue is at the bound: still the host
        (True, 4, {}, ["smollm2@gpu-pc", "lan-chat@lan", "cloud-chat@cloud"]),
        # over the bound: the remotes first, the busy host before anything down
        (True, 5, {"lan": False}, ["cloud-chat@cloud", "smollm2@gpu-pc", "lan-chat@lan"]),
        # the manager does not know the model: like an unreachable host
        (True, None, {}, ["lan-chat@lan", "cloud-chat@cloud", "smollm2@gpu-pc"]),
        # everything down: the catalogue's order (the first error is the client's)
        (
            False,
            0,
            {"lan": False, "cloud": False},
            ["smollm2@gpu-pc", "lan-chat@lan", "cloud-chat@cloud"],
        ),
        # not polled yet (None) counts as up
        (False, 0, {"lan": None}, ["lan-chat@lan", "cloud-chat@cloud", "smollm2@gpu-pc"]),
    ],
)
def test_fallback_order(
    tmp_path: Path,
    host_up: bool,
    queue: int | None,
    health: dict[str, bool | None],
    expected: list[str],
) -> None:
    route = _router(tmp_path).routes["smollm2"]
    queues = {} if queue is None else {"smollm2": queue}
    assert _names(order(route, View(host_up, queues, health))) == expected


def test_without_a_bound_the_queue_never_diverts() -> None:
    route = Route((Target("a", "h"), Target("b", "h")), max_queue=None)
    assert _names(order(route, View(True, {"a": 10_000, "b": 0}, {}))) == ["a@h", "b@h"]


def test_the_view_adds_this_proxys_waiting_requests_to_the_managers_queue() -> None:
    status = ModelStatus(id="a", type="text", state="ready", since=0.0, waiting=2, backend="vllm")
    targets = (Target("a", "h"), Target("b", "h"))
    seen = view(True, {"a": status}, {"a": 3}, {}, targets)
    assert seen.queues == {"a": 5}  # b: unknown to the manager
    route = Route(targets, max_queue=4)
    assert _names(order(route, seen)) == ["a@h", "b@h"]  # a is busy, b unknown: busy first


def test_an_endpoints_health_and_its_model_status(tmp_path: Path) -> None:
    router = _router(tmp_path)
    status = router.status("cloud-chat")
    assert status is not None
    wire = status.to_wire()
    assert (wire["backend"], wire["endpoint"], wire["reachable"], wire["tools"]) == (
        "remote",
        "cloud",
        None,
        True,
    )
    router.mark("cloud", False, "ConnectionRefusedError: refused")
    status = router.status("cloud-chat")
    assert status is not None
    assert (status.state, status.reachable, status.last_error) == (
        "failed",
        False,
        "ConnectionRefusedError: refused",
    )
    router.mark("cloud", True)
    assert router.statuses()["cloud-embed"].reachable is True
    assert "tools" not in router.statuses()["cloud-embed"].to_wire()
    assert router.status("smollm2") is None


def test_a_bad_catalogue_stops_python_m_proxy_naming_file_key_and_reason(tmp_path: Path) -> None:
    path = _file(tmp_path, {"endpoints": {"cloud": {"base_url": "http://x/v1", "models": {}}}})
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOMELAB_")}
    env |= {
        "HOMELAB_MANAGER_TOKEN": secrets.token_urlsafe(32),
        "HOMELAB_API_KEYS": "off",
        "HOMELAB_CATALOGUE": str(path),
        "HOMELAB_JOBS_URL": str(tmp_path / "jobs.db"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "proxy"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert f"{path}: key 'endpoints.cloud.models': " in done.stderr
    assert "Traceback" not in done.stderr


def _token(tmp_path: Path, name: str, mode: int = 0o600) -> str:
    path = tmp_path / f"{name}.token"
    path.write_text(secrets.token_urlsafe(32) + "\n")
    path.chmod(mode)
    return path.name


def test_several_hosts_load_with_their_tokens_and_wake_on_lan_fields(tmp_path: Path) -> None:
    data = {
        "hosts": {
            "gpu-pc": {},
            "laptop": {
                "url": "http://10.0.0.3:8090/",
                "token_file": _token(tmp_path, "laptop"),
                "mac": "AA:bb:cc:dd:ee:01",
                "broadcast": "10.0.0.255",
                "sleepable": True,
            },
        }
    }
    cat = load_catalogue(_file(tmp_path, data))
    assert cat.host == "gpu-pc" and list(cat.hosts) == ["gpu-pc", "laptop"]
    assert cat.hosts["gpu-pc"].url is None and cat.hosts["gpu-pc"].token is None
    laptop = cat.hosts["laptop"]
    assert laptop.url == "http://10.0.0.3:8090" and laptop.sleepable and laptop.wol_port == 9
    assert laptop.token and laptop.token not in repr(laptop)


def test_a_host_token_file_readable_by_others_or_a_weak_token_is_refused(tmp_path: Path) -> None:
    data = {"hosts": {"a": {"url": "http://h:1", "token_file": _token(tmp_path, "a", 0o644)}}}
    with pytest.raises(CatalogueError) as err:
        load_catalogue(_file(tmp_path, data))
    assert err.value.key == "hosts.a.token_file" and "chmod 600" in err.value.reason
    (tmp_path / "weak.token").write_text("short\n")
    (tmp_path / "weak.token").chmod(0o600)
    data = {"hosts": {"a": {"url": "http://h:1", "token_file": "weak.token"}}}
    with pytest.raises(CatalogueError) as err:
        load_catalogue(_file(tmp_path, data))
    assert err.value.key == "hosts.a.token_file"


def test_a_sleepable_host_needs_a_mac_and_two_hosts_one_url(tmp_path: Path) -> None:
    tok = _token(tmp_path, "t")
    for hosts, key in [
        ({"a": {"url": "http://h:1", "token_file": tok, "sleepable": True}}, "hosts.a.mac"),
        (
            {
                "a": {"url": "http://h:1", "token_file": tok},
                "b": {"url": "http://h:1/", "token_file": tok},
            },
            "hosts.b.url",
        ),
    ]:
        with pytest.raises(CatalogueError) as err:
            load_catalogue(_file(tmp_path, {"hosts": hosts}))
        assert err.value.key == key, err.value
