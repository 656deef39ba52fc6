"""A model named on the hub that cannot be had: a prompt error a newcomer can act on, never minutes of retries."""

from __future__ import annotations

import socket
import time

import pytest

from imgsearch.model.embedder import ModelSettingError
from imgsearch.model.hub import check_available, hub_names
from tests.support.photos import write_photo
from tests.support.processes import cli_environment, run_cli


def closed_port() -> int:
    """A port on this machine that nothing listens on: the hub's address there refuses at once, and no request
    leaves the machine."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("how", ["HF_HUB_OFFLINE=1", "no network"])
def test_a_hub_model_that_cannot_be_downloaded_fails_fast_and_names_the_fix(imgsearch_bin, tmp_path, how):
    env = cli_environment(tmp_path / "data", tmp_path / "unused")
    del env["IMGSEARCH_MODEL"]  # the default, clip-ViT-B-32, as a newcomer runs it
    env["HF_HOME"] = str(tmp_path / "empty-hub-cache")
    if how == "no network":
        env.pop("HF_HUB_OFFLINE", None)
        env.pop("TRANSFORMERS_OFFLINE", None)
        env["HF_ENDPOINT"] = f"http://127.0.0.1:{closed_port()}"
    write_photo(tmp_path / "photos" / "a.png", seed=1)
    started = time.monotonic()
    result = run_cli(imgsearch_bin, env, "index", str(tmp_path / "photos"), timeout=60)
    took = time.monotonic() - started
    assert result.returncode == 1
    assert took < 30
    assert "IMGSEARCH_MODEL" in result.stderr and "HF_HUB_OFFLINE" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_local_folder_needs_no_hub(tiny_model_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub_names(str(tiny_model_dir)) == []
    check_available(str(tiny_model_dir))  # no error


def test_bare_sentence_transformers_names_are_looked_up_in_their_organisation(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub_names("clip-ViT-B-32") == ["sentence-transformers/clip-ViT-B-32"]
    assert hub_names("google/siglip-base-patch16-224") == ["google/siglip-base-patch16-224"]
    with pytest.raises(ModelSettingError, match="HF_HUB_OFFLINE"):
        check_available("someone/a-model-nobody-has-cached")
    with pytest.raises(ModelSettingError, match="cannot be loaded: .* is no folder on this machine"):
        check_available(f"{tmp_path}/a-folder-that-is-not-there")
