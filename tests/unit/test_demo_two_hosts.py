"""`./setup.sh demo --hosts 2` (deploy/demo.py, docs/hosts.md): the second host's models.json
and the proxy's catalogue as the demo writes them, read by the real loaders (the manager's
models.json, the proxy's catalogue), with every port of both hosts distinct and where the
help says (N+10..N+16 the first host, N+17..N+19 the second)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from manager.spec import parse_catalogue
from proxy.catalogue import load_catalogue

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("demo", ROOT / "deploy" / "demo.py")
assert _spec is not None and _spec.loader is not None
demo = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("demo", demo)
_spec.loader.exec_module(demo)

N = 18080


def _ports(models: dict) -> set[int]:
    return {m["port"] for name, m in models.items() if not name.startswith("$")}


def test_the_second_host_serves_the_image_and_embeddings_models_on_ports_of_its_own(
    tmp_path: Path,
) -> None:
    first = demo.demo_models(
        tmp_path / "text",
        tmp_path / "tiny-sd",
        N,
        embed_model=tmp_path / "minilm",
        stt_model=tmp_path / "whisper",
        tts_voice=tmp_path / "joe.onnx",
    )
    second = demo.second_host_models(first, N)
    parse_catalogue(first, "models.json")
    parse_catalogue(second, "models-gpu-2.json")
    assert {m for m in second if not m.startswith("$")} == {demo.IMAGE_MODEL, demo.EMBED_MODEL}
    one, two = _ports(first), _ports(second)
    assert one <= set(range(N + 11, N + 17))
    assert two == {N + 18, N + 19}
    assert N + demo.MANAGER2_OFFSET == N + 17 and N + demo.MANAGER_OFFSET == N + 10
    containers = [
        m["container"] for m in (*first.values(), *second.values()) if isinstance(m, dict)
    ]
    assert len(containers) == len(set(containers))


def test_the_proxy_reads_the_demos_catalogue_of_two_hosts(tmp_path: Path) -> None:
    demo.manager_token(tmp_path)  # DIR/manager-token, mode 600: both managers' token
    catalogue = load_catalogue(demo.write_catalogue(tmp_path, N + 17))
    assert list(catalogue.hosts) == list(demo.HOSTS)
    gpu2 = catalogue.hosts["gpu-2"]
    assert gpu2.url == f"http://127.0.0.1:{N + 17}" and gpu2.token
    assert catalogue.hosts["gpu-1"].url is None  # HOMELAB_MANAGER_URL's
