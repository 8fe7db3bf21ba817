"""The README's main job really trains (a short run) and writes its checkpoint and plot."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")


def test_digits_trains_saves_and_resumes(tmp_path):
    from nnx.examples import digits

    out = tmp_path / "digits"
    summary = digits.main(["--epochs", "3", "--no-progress", "--out", str(out)])
    assert summary["test_accuracy"] > 0.9
    assert (out / "curves.png").stat().st_size > 10_000
    assert json.loads((out / "summary.json").read_text())["epochs"] == 3
    resumed = digits.main(["--epochs", "4", "--no-progress", "--resume", "--out", str(out)])
    assert resumed["test_accuracy"] > 0.9
    assert sorted(p.name for p in (out / "checkpoints").iterdir() if p.name.isdigit()) == ["3", "4"]
