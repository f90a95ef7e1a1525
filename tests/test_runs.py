"""The run folder contract (mlx_partner.runs) and the plots, without a model: manifest versions,
the latest pointer, run names, and the pictures matplotlib draws."""

from __future__ import annotations

import json
import struct

import pytest

from mlx_partner.errors import TrainingError
from mlx_partner.plots import bar_chart, loss_plot
from mlx_partner.runs import (
    MANIFEST,
    MANIFEST_VERSION,
    find_run,
    new_run_name,
    point_latest,
    read_manifest,
    run_dirs,
    write_manifest,
)


def test_a_manifest_without_a_version_reads_as_version_1(tmp_path):
    (tmp_path / MANIFEST).write_text(json.dumps({"run": "old", "status": "finished"}))
    assert read_manifest(tmp_path) == {"run": "old", "status": "finished", "version": 1}


def test_write_manifest_stamps_the_current_version_first(tmp_path):
    write_manifest(tmp_path, {"run": "r", "version": 0})
    assert list(json.loads((tmp_path / MANIFEST).read_text())) == ["version", "run"]
    assert read_manifest(tmp_path)["version"] == MANIFEST_VERSION


@pytest.mark.parametrize("content, message", [
    (json.dumps({"version": MANIFEST_VERSION + 1}), "upgrade mlx-partner"),
    (json.dumps({"version": "two"}), "manifest version 'two'"),
    ("[1, 2]", "not a JSON object"),
    ("{", "Could not read"),
])
def test_unreadable_or_newer_manifests_are_refused_plainly(tmp_path, content, message):
    (tmp_path / MANIFEST).write_text(content)
    with pytest.raises(TrainingError, match=message):
        read_manifest(tmp_path)


def test_a_folder_without_a_manifest_is_not_a_run(tmp_path):
    with pytest.raises(TrainingError, match="has no manifest.json"):
        read_manifest(tmp_path)


def test_latest_pointer_run_names_and_run_dirs(tmp_path):
    adapters = tmp_path / "adapters"
    for name in ("b", "a"):
        (adapters / name).mkdir(parents=True)
        write_manifest(adapters / name, {"run": name})
        (adapters / name / "adapter_config.json").write_text("{}")
    point_latest(adapters, "b")
    assert (adapters / "LATEST").read_text() == "b\n"
    assert find_run(tmp_path) == (adapters / "b").resolve()
    assert [p.name for p in run_dirs(tmp_path)] == ["a", "b"]  # adapters/latest is not a run of its own
    name = new_run_name(adapters)
    assert name.startswith("run-")
    (adapters / name).mkdir()
    assert new_run_name(adapters) != name  # a taken name gets -2 (or the clock has moved on)


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_loss_plot_and_bar_chart_write_pngs_atomically(tmp_path):
    loss_plot(tmp_path / "loss.png", [(1, 3.0), (2, float("inf"))], [(0, 3.1)], float("nan"))
    assert _png_size((tmp_path / "loss.png").read_bytes()) == (640, 400)
    bar_chart(tmp_path / "chart.png", "scores", ["F1", "STYLE"], {"base": [0.1, None], "run": [0.4, 0.7]},
              "score", ylim=(0, 1), value_format="{:.0%}")
    width, height = _png_size((tmp_path / "chart.png").read_bytes())
    assert width >= 640 and height == 400
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chart.png", "loss.png"]  # no temp file left
