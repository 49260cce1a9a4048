"""The README's Python examples run as written (in a temporary folder, so their runs land there)."""
from __future__ import annotations

import re

import pytest
from conftest import REPO_ROOT, SHARED


def python_blocks(heading: str) -> list[str]:
    text = (REPO_ROOT / "README.md").read_text()
    section = text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_the_python_api_examples_run(tmp_path, monkeypatch, one_thread):
    blocks = python_blocks("Python API")
    assert len(blocks) == 2, "the README's Python API section has a forecasting and a classification example"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(blocks[0], "README forecasting example", "exec"), namespace)
    assert namespace["run"].path.name == "notebook" and len(namespace["run"].predict(namespace["df"].tail(60))) == 7
    if not SHARED.is_dir():
        pytest.skip("the classification example reads ../shared/data")
    monkeypatch.chdir(REPO_ROOT)          # the example's config path is relative to the repository
    smaller = (blocks[1].replace('out="runs/trec_notebook"', f'out="{tmp_path / "trec"}"')   # out of the repo
               .replace('"train.epochs=2"', '"train.epochs=1", "model.encoder=gru:16"'))     # seconds, not a minute
    assert smaller != blocks[1]
    namespace = {}
    exec(compile(smaller, "README classification example", "exec"), namespace)
    predictions = namespace["run"].predict(["Who wrote Hamlet ?"])
    assert "label" in predictions.columns and len(predictions) == 1
