"""The comparison report as a reader sees it: ``report.html`` rendered by headless Chromium at 1280 px.

The test builds a comparison folder with what makes a report wide (long hybrid specs with options, three seeds,
a forecaster's many test metrics and its reference forecasts, learning curves, a task plot), renders the
report, and measures in the browser: no table reaches past the page's width, no ``mean ± std`` cell wraps
over two lines, every image loads. The measurements are written into the DOM by a small script and read back
with ``--dump-dom``. Skipped where no Chromium is installed (Debian: ``apt-get install chromium``).
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from hybridrnn.experiments.report import write_report

WIDTH = 1280

BROWSER = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome", "chrome")
                if shutil.which(name)), None)
needs_browser = pytest.mark.skipif(BROWSER is None, reason="no Chromium on PATH (apt-get install chromium): "
                                                           "the rendered report cannot be measured")

MODELS = ["gru:8", "(lstm:64|gru:64)[fusion=gate,share_input_projection=true]",
          "lstm:32x2>gru:32[tie_layers=true,dropout=0.1]", "((lstm:16>gru:16)|gru:32)[fusion=concat]"]
METRICS = ["loss", "mse", "mae", "rmse", "smape", "mase"]
REFERENCES = ["naive", "seasonal_naive", "linear", "mean"]

#: measures the page after it loaded and writes the figures into <pre id="measurements">
MEASURE = """
<script>
window.addEventListener('load', () => {
  const width = document.documentElement.clientWidth;
  const tables = [...document.querySelectorAll('table')].map(t => {
    const r = t.getBoundingClientRect();
    return {right: r.right, width: r.width, scroll: t.scrollWidth, client: t.clientWidth};
  });
  const lines = el => {
    const range = document.createRange(); range.selectNodeContents(el);
    return new Set([...range.getClientRects()].map(r => Math.round(r.top))).size;
  };
  let wrapped = [];
  document.querySelectorAll('td').forEach(td => {
    if (td.cellIndex > 0 && lines(td) > 1) wrapped.push(td.textContent);
  });
  const images = [...document.images].map(i => ({ok: i.complete && i.naturalWidth > 0,
    width: i.getBoundingClientRect().width, alt: i.alt}));
  const pre = document.createElement('pre'); pre.id = 'measurements';
  pre.textContent = JSON.stringify({width, pageScroll: document.documentElement.scrollWidth, tables, wrapped,
                                    images});
  document.body.appendChild(pre);
});
</script>
"""


def _comparison(root):
    """A comparison folder: results.csv, compare.json, run folders with metrics.jsonl and a task plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(0)
    rows = []
    for m, model in enumerate(MODELS):
        for seed in range(3):
            run = root / "runs" / f"m{m}-s{seed}"
            run.mkdir(parents=True)
            records = [{"epoch": e, "val": {"loss": 1.0 / e + 0.1 * m + 0.01 * seed}} for e in range(1, 9)]
            (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
            row = {"model": model, "encoder": model.split("[")[0], "options": "{}", "seed": seed, "length": None,
                   "task": "forecast", "parameters": 1234 * (m + 1), "epochs": 8, "epochs_to_best": 8,
                   "train_seconds": 12.5 + m, "train_seconds_per_epoch": 1.56 + 0.1 * rng.random(),
                   "infer_ms_per_batch": 3.2 + rng.random(), "infer_ms_per_sequence": 0.1 + 0.01 * rng.random(),
                   "infer_path": "GRU custom, LSTM fused", "run_dir": f"runs/m{m}-s{seed}",
                   "val_loss": 0.3 + 0.1 * m, "test_beats_baselines": 1.0}
            for metric in METRICS:
                row[f"test_{metric}"] = 0.2 + 0.05 * m + 0.01 * rng.random() + 1e-3 * len(metric)
                for ref in REFERENCES:
                    row[f"test_{ref}_{metric}"] = 0.5 + 0.01 * len(ref) + 1e-3 * len(metric)
            rows.append(row)
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.plot(range(10))
    fig.savefig(root / "runs" / "m0-s0" / "forecast_test.png")
    plt.close(fig)
    pd.DataFrame(rows).to_csv(root / "results.csv", index=False)
    (root / "compare.json").write_text(json.dumps({"config": "configs/x.yaml",
                                                   "train_config": str(root / "none.yaml")}))


def _render(html_path, tmp_path) -> dict:
    page = tmp_path / "measured.html"
    page.write_text(html_path.read_text().replace("</body>", MEASURE + "</body>"))
    out = subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                          f"--window-size={WIDTH},900", "--hide-scrollbars", "--virtual-time-budget=10000",
                          f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120)
    match = re.search(r'<pre id="measurements">(.*?)</pre>', out.stdout, re.S)
    assert match, f"no measurements from {BROWSER}: {out.stderr[-2000:]}"
    import html

    return json.loads(html.unescape(match.group(1)))


@needs_browser
def test_report_fits_1280_px_and_every_image_loads(tmp_path):
    root = tmp_path / "cmp"
    root.mkdir()
    _comparison(root)
    md, html_path = write_report(root)
    text = md.read_text()
    assert text.index("## Reference values") > text.index("learning_curves.png")    # below the plots
    assert "test_beats_baselines" not in text.split("## Reference values")[1]
    figures = _render(html_path, tmp_path)
    assert figures["width"] == WIDTH
    assert len(figures["tables"]) >= 3                   # summary, size and cost, references
    for table in figures["tables"]:
        assert table["right"] <= WIDTH and table["scroll"] <= table["client"] + 1, table
    assert figures["pageScroll"] <= WIDTH                # nothing needs horizontal scrolling
    assert figures["wrapped"] == []                      # no number cell over two lines
    assert len(figures["images"]) >= 4 and all(i["ok"] for i in figures["images"]), figures["images"]
    assert all(0 < i["width"] <= WIDTH for i in figures["images"])


def test_report_figures_have_the_usual_file_mode(tmp_path):
    """The report's PNGs are written like every other file (0666 & ~umask, 0644 by default), not 0600."""
    import os

    _comparison(tmp_path)
    write_report(tmp_path)
    umask = os.umask(0)
    os.umask(umask)
    pngs = list((tmp_path / "report_files").glob("*.png"))
    assert pngs and all((p.stat().st_mode & 0o777) == (0o666 & ~umask) for p in pngs)
