"""ONNX export of a trained forecaster: the file runs in onnxruntime with any batch size and matches torch."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
ort = pytest.importorskip("onnxruntime")

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("options", [["model.encoder=(lstm:4|gru:4)"],
                                     ["model.encoder=lstm:4>gru:4", "model.layer_norm=true", "model.path=custom"]],
                         ids=["fused-parallel-attention", "custom-layer-norm"])
def test_export_matches_torch_at_another_batch_size(tmp_path, options):
    import torch

    from conftest import train
    from hybridrnn.api import load_run
    from hybridrnn.train.export import export_onnx

    run = train(REPO / "configs" / "quickstart.yaml", out=tmp_path / "run", progress="none",
                overrides=["train.epochs=1", "train.plots=false", *options])
    _, task, model = load_run(run)     # the fitted state and weights alone: the export reads no data
    result = export_onnx(task, model, tmp_path / "model.onnx")
    assert result["inputs"] == {"past": [28, 13], "future": [7, 4]} and result["outputs"] == ["forecast"]
    assert result["max_abs_difference"] <= 1e-4
    task.setup()                       # now the data, for windows the export never saw
    batch = task._batch(task.origins["test"][:11])           # neither the traced 4 nor the checked 7
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {"past": batch["past"].numpy(), "future": batch["future"].numpy()})[0]
    with torch.no_grad():
        want = model(batch["past"], batch["future"])[0].numpy()
    assert got.shape == (11, 7, 1)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_export_of_a_task_without_support_is_a_clear_error(tmp_path):
    from typer.testing import CliRunner

    from hybridrnn.cli import app
    from conftest import train
    run = train({"task": "long_range", "data": {"problem": "adding", "length": 5, "n_train": 16, "n_val": 8,
                                                "n_test": 8},
                 "model": {"encoder": "gru:4"}, "train": {"epochs": 1, "batch_size": 8, "progress": "none"}},
                out=tmp_path / "run")
    res = CliRunner().invoke(app, ["export", str(run), "--output", str(tmp_path / "m.onnx")])
    assert res.exit_code == 2 and "does not support ONNX export" in res.output
    assert not (tmp_path / "m.onnx").exists() and not list(tmp_path.glob(".m.onnx.*"))
