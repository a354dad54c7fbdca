"""`./setup.sh demo --hosts 2` (docs/hosts.md, "The demo with two hosts"), tested: two real
managers on this machine (gpu-1 with every demo model, gpu-2 with the image and
embeddings models too) behind the real proxy. The proxy lists each model once with its
hosts; the image model made resident on gpu-2 (asked of gpu-2's own manager) is where the
proxy sends a picture (real diffusers, the tiny pipeline); and the web UI's `/models`
table, in real Chromium, shows both hosts with the `*` where it is resident.

Markers ``diffusers`` and ``browser``; skips (with the fix) without the demo's deps
(`./setup.sh deps`) or Chromium. No vLLM model is started: only the image model is used.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.e2e.browser.uistack import DESKTOP, open_page
from tests.e2e.conftest import ARTIFACTS, REPO_ROOT, free_port_base, state_dir

pytestmark = [pytest.mark.diffusers, pytest.mark.browser]

PORT_BASES = range(18900, 18980)
"""The proxy's port N; the demo with two hosts also takes N+10 to N+19."""
OFFSETS = (0, *range(10, 20))
GPU2_MANAGER = 17


@dataclass
class TwoHostDemo:
    dir: Path
    port: int
    api_key: str
    token: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def models(self) -> dict[str, dict]:
        r = httpx.get(
            self.url + "/v1/models",
            headers={"Authorization": f"Bearer {self.api_key}"},
            timeout=30,
        )
        r.raise_for_status()
        return {m["id"]: m for m in r.json()["data"]}


@pytest.fixture(scope="module")
def demo2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoHostDemo]:
    """`./setup.sh demo --detach --no-deps --hosts 2` on free ports; stopped at the end."""
    pytest.importorskip(
        "diffusers", reason="diffusers is not installed (pip install -e '.[image]')"
    )
    state = state_dir()
    needed = [
        state / "vllm-venv" / "bin" / "python",
        state / "models" / "all-minilm-l6-v2" / "config.json",
        state / "models" / "whisper-tiny-en" / "model.bin",
        state / "models" / "piper-joe-medium" / "en_US-joe-medium.onnx",
    ]
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        pytest.skip(f"the demo's deps are missing ({', '.join(missing)}): run ./setup.sh deps")
    demo_dir = tmp_path_factory.mktemp("demo-hosts")
    port = free_port_base(PORT_BASES, OFFSETS)
    env = {**os.environ, "HOMELAB_DEMO_DIR": str(demo_dir), "NO_COLOR": "1"}
    env["HOMELAB_STATE_DIR"] = str(state)

    def setup_sh(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(REPO_ROOT / "setup.sh"), *args],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
            stdin=subprocess.DEVNULL,
        )

    started = setup_sh("demo", "--detach", "--no-deps", "--hosts", "2", "--port", str(port))
    try:
        assert started.returncode == 0, f"demo failed:\n{started.stdout}\n{started.stderr}"
        assert f"gpu-2 http://127.0.0.1:{port + GPU2_MANAGER}" in started.stdout, started.stdout
        yield TwoHostDemo(
            dir=demo_dir,
            port=port,
            api_key=(demo_dir / "api-key").read_text().strip(),
            token=(demo_dir / "manager-token").read_text().strip(),
        )
    finally:
        setup_sh("demo", "stop")
        ARTIFACTS.mkdir(exist_ok=True)
        with contextlib.suppress(OSError):
            shutil.copytree(demo_dir / "logs", ARTIFACTS / "demo-hosts-logs", dirs_exist_ok=True)


def test_the_two_host_demo_lists_places_and_shows_both_hosts(
    demo2: TwoHostDemo, browser: object, request: pytest.FixtureRequest
) -> None:
    from playwright.sync_api import expect

    listed = demo2.models()
    assert listed["tiny-sd"]["hosts"] == ["gpu-1", "gpu-2"]
    assert listed["minilm"]["hosts"] == ["gpu-1", "gpu-2"]
    assert listed["smollm2"]["hosts"] == ["gpu-1"]
    assert listed["tiny-sd"]["away_on"] == [] and listed["tiny-sd"]["resident_on"] == []

    # The image model loaded on gpu-2 (its own manager asked): a picture is made there.
    ensured = httpx.post(
        f"http://127.0.0.1:{demo2.port + GPU2_MANAGER}/v1/models/tiny-sd/ensure",
        headers={"Authorization": f"Bearer {demo2.token}"},
        timeout=600,
    )
    assert ensured.status_code == 200, ensured.text
    end = time.monotonic() + 60
    while demo2.models()["tiny-sd"]["resident_on"] != ["gpu-2"] and time.monotonic() < end:
        time.sleep(0.2)
    assert demo2.models()["tiny-sd"]["resident_on"] == ["gpu-2"]
    picture = httpx.post(
        demo2.url + "/v1/images/generations",
        headers={"Authorization": f"Bearer {demo2.api_key}"},
        json={"model": "tiny-sd", "prompt": "a red square", "size": "64x64"},
        timeout=600,
    )
    assert picture.status_code == 200, picture.text
    assert picture.headers["x-homelab-served-by"] == "tiny-sd@gpu-2"
    assert demo2.models()["tiny-sd"]["resident_on"] == ["gpu-2"]  # gpu-1 started nothing

    # The web UI's /models table: each model once, with its hosts.
    for ui in open_page(browser, demo2.url + "/", request.node.name, DESKTOP):
        page = ui.page
        expect(page.locator("#prompt-label")).to_have_text("key>")  # type: ignore[attr-defined]
        ui.type_line(demo2.api_key)
        expect(page.locator("#live")).to_have_attribute("data-status", "connected")  # type: ignore[attr-defined]
        ui.type_line("/models")
        table = page.locator("table.models").last  # type: ignore[attr-defined]
        expect(table.locator("tr[data-model=tiny-sd] td.hosts")).to_have_text("gpu-1 gpu-2*")
        expect(table.locator("tr[data-model=minilm] td.hosts")).to_have_text("gpu-1 gpu-2")
        expect(table.locator("tr[data-model=smollm2] td.hosts")).to_have_text("gpu-1")
        assert table.locator("tr[data-model=tiny-sd]").count() == 1
        ui.shot("models-with-two-hosts")
