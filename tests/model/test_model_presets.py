"""`imgsearch models`: the known presets, with the speeds bench/model_speed.py measured."""

from __future__ import annotations

import json

import pytest

from imgsearch.model.presets import PRESETS, SPEED_FILE, measured_speeds, table
from tests.support.processes import run_cli


def test_the_table_shows_each_presets_measured_speed_by_its_architecture(tmp_path):
    speeds = {
        "measured": "2026-11-25",
        "architectures": {"vit-b-32": {"img_s": 21.456, "text_ms": 9.4}, "vit-l-14": {"img_s": 1.25, "text_ms": 30.2}},
    }
    path = tmp_path / "speeds.json"
    path.write_text(json.dumps(speeds))
    lines = table(PRESETS, measured_speeds(path)).splitlines()
    row = {line.split()[0]: line.split() for line in lines[1:]}
    assert row["clip-ViT-B-32"][4:6] == ["21.5", "9"]
    assert row["patrickjohncyh/fashion-clip"][4:6] == ["21.5", "9"]  # the same architecture, the same speed
    assert row["clip-ViT-L-14"][4:6] == ["1.2", "30"]
    assert row["clip-ViT-B-16"][4:6] == ["-", "-"]  # not measured
    assert "CC-BY-NC-4.0" in next(line for line in lines if line.startswith("geolocal/StreetCLIP"))


def test_an_unreadable_speed_file_means_no_speeds(tmp_path):
    assert measured_speeds(tmp_path / "missing.json") is None
    (tmp_path / "broken.json").write_text("{not json")
    assert measured_speeds(tmp_path / "broken.json") is None


@pytest.mark.skipif(not SPEED_FILE.exists(), reason="bench/model_speed.py has not written its results")
def test_the_measured_models_have_the_sizes_the_presets_state():
    """The bench builds each architecture at its real sizes: its vector and input sizes must be the presets'."""
    measured = measured_speeds()["architectures"]
    for preset in PRESETS:
        if preset.architecture in measured:
            assert (measured[preset.architecture]["dim"], measured[preset.architecture]["input_size"]) == (
                preset.dim,
                preset.input_size,
            ), preset.name


def test_imgsearch_models_lists_every_preset(imgsearch_bin, cli_env):
    shown = run_cli(imgsearch_bin, cli_env, "models")
    assert shown.returncode == 0, shown.stderr
    for preset in PRESETS:
        assert preset.name in shown.stdout
    listed = json.loads(run_cli(imgsearch_bin, cli_env, "models", "--json").stdout)
    assert [p["name"] for p in listed["presets"]] == [p.name for p in PRESETS]
    assert listed["speeds"] == measured_speeds()
