"""Write failures are clean errors and lose nothing (issue 13, item 1).

An output folder that is read-only (``predict --output``, ``export --output``, ``train --out``,
``train --resume``), a run folder that turns read-only after epoch 1, and a disk that fills up in the middle of a
checkpoint file: each ends in one ``error:`` line naming the path and the operation, exit code 2, and whatever
was saved before stays loadable with ``hybridrnn.load``.

A read-only folder is a read-only bind mount where the sandbox allows ``mount`` (root ignores ``chmod``), a
``chmod 555`` folder for a user other than root, and otherwise every write below the folder is patched to
raise ``EROFS``.
"""
from __future__ import annotations

import builtins
import contextlib
import errno
import io
import os
import pathlib
import shutil
import subprocess

import pytest
import torch
from typer.testing import CliRunner

from conftest import train
from hybridrnn import load
from hybridrnn.cli import app
from hybridrnn.errors import HybridRNNError, RunDirError
from hybridrnn.train.callbacks import Callback, CheckpointCallback

FORECAST = {"task": "forecast",
            "data": {"path": "bundled:seattle_weather", "time_column": "date", "target": ["temp_max"],
                     "split": [0.7, 0.1, 0.2]},
            "window": {"lookback": 8, "horizon": 2},
            "model": {"encoder": "gru:4"},
            "train": {"epochs": 1, "batch_size": 128, "progress": "none", "num_threads": 1, "plots": False}}


def _bind_mount_read_only(folder: pathlib.Path) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    done = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True)
    if done.returncode != 0:
        return False
    if subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], capture_output=True).returncode != 0:
        subprocess.run(["umount", str(folder)], capture_output=True)
        return False
    return True


@contextlib.contextmanager
def read_only(folder: pathlib.Path, monkeypatch):
    """``folder`` (and what is below it) read-only for the duration of the block."""
    folder = pathlib.Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    if _bind_mount_read_only(folder):
        try:
            yield "bind mount"
        finally:
            subprocess.run(["umount", str(folder)], check=True)
        return
    if os.geteuid() != 0:
        mode = folder.stat().st_mode
        folder.chmod(0o555)
        try:
            yield "chmod"
        finally:
            folder.chmod(mode)
        return
    with monkeypatch.context() as patch:       # root without mount: every write below the folder fails
        def below(path) -> bool:
            try:
                return pathlib.Path(os.fsdecode(path)).resolve().is_relative_to(folder)
            except (TypeError, ValueError):
                return False

        def refuse(path):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(path))

        real_open, real_os_open = builtins.open, os.open
        real_mkdir, real_replace, real_unlink = os.mkdir, os.replace, os.unlink

        def fake_open(file, mode="r", *args, **kwargs):
            if isinstance(file, (str, bytes, os.PathLike)) and any(c in mode for c in "wax+") and below(file):
                refuse(file)
            return real_open(file, mode, *args, **kwargs)

        def fake_os_open(path, flags, *args, **kwargs):
            if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and below(path):
                refuse(path)
            return real_os_open(path, flags, *args, **kwargs)

        def guard(real):
            def wrapped(path, *args, **kwargs):
                if below(path):
                    refuse(path)
                return real(path, *args, **kwargs)
            return wrapped

        patch.setattr(builtins, "open", fake_open)
        patch.setattr(io, "open", fake_open)
        patch.setattr(os, "open", fake_os_open)
        patch.setattr(os, "mkdir", guard(real_mkdir))
        patch.setattr(os, "replace", guard(real_replace))
        patch.setattr(os, "unlink", guard(real_unlink))
        yield "patched writes"


def _cli(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


def _one_clean_line(code: int, output: str, *needles: str) -> None:
    assert code == 2, output
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.fixture(scope="module")
def forecast_run(tmp_path_factory):
    torch.set_num_threads(1)
    return train(FORECAST, out=tmp_path_factory.mktemp("reliability") / "run")


def test_predict_and_export_into_a_read_only_folder(forecast_run, tmp_path, monkeypatch):
    out = tmp_path / "out"
    with read_only(out, monkeypatch):
        code, output = _cli("predict", forecast_run, "--input", "bundled:seattle_weather",
                            "--output", out / "p.csv")
        _one_clean_line(code, output, "cannot write the predictions to", str(out.resolve() / "p.csv"),
                        "Read-only file system", "errno 30")
        code, output = _cli("export", forecast_run, "--output", out / "m.onnx", "--no-check")
        _one_clean_line(code, output, "cannot write", "m.onnx", "Read-only file system")
    assert not list(out.iterdir())          # no temporary file left behind


def test_train_into_a_read_only_folder(tmp_path, monkeypatch):
    folder = tmp_path / "ro"
    with read_only(folder, monkeypatch):
        code, output = _cli("train", _yaml(tmp_path, FORECAST), "--out", folder / "run")
    _one_clean_line(code, output, "cannot write the run directory", str(folder / "run"), "Read-only file system",
                    "nothing was trained")


def _yaml(tmp_path, config) -> pathlib.Path:
    import yaml

    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_resume_a_run_in_a_read_only_folder(forecast_run, tmp_path, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(forecast_run, run)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    with read_only(run, monkeypatch):
        code, output = _cli("train", "--resume", run, "--set", "train.epochs=2")
        _one_clean_line(code, output, "cannot write the run directory", str(run), "Read-only file system",
                        "last good checkpoint (epoch 1)")
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before     # nothing touched
    assert load(run).predict("bundled:seattle_weather").shape[0] > 0


class _AfterEpoch(Callback):
    """Waits until epoch ``epoch``'s checkpoint is on disk, then calls ``action``."""

    def __init__(self, epoch: int, action):
        self.epoch, self.action = epoch, action

    def on_epoch_end(self, trainer, record):
        if record["epoch"] == self.epoch:
            next(c for c in trainer.callbacks if isinstance(c, CheckpointCallback)).writer.wait()
            self.action()


def test_a_run_whose_folder_turns_read_only_after_epoch_1(tmp_path, monkeypatch, one_thread):
    from hybridrnn.api import train_run

    run = tmp_path / "run"
    run.mkdir()
    with contextlib.ExitStack() as stack:
        callback = _AfterEpoch(1, lambda: stack.enter_context(read_only(run, monkeypatch)))
        with pytest.raises(RunDirError) as caught:
            train_run({**FORECAST, "train": {**FORECAST["train"], "epochs": 3}}, out=run, callbacks=[callback])
    message = str(caught.value)
    assert "cannot write the checkpoint of epoch 2" in message and "Read-only file system" in message
    assert "the last good checkpoint (epoch 1) is kept in" in message and "--resume" in message
    assert not [p for p in run.iterdir() if ".tmp-" in p.name or p.name.endswith(".next")]
    assert load(run).task is not None and load(run).predict("bundled:seattle_weather").shape[0] > 0
    # once writable again, the run continues from epoch 1
    from hybridrnn.train import checkpoint as ckpt

    assert ckpt.read_json(run / ckpt.STATE)["epoch"] == 1
    train(out=None, resume=run, overrides=["train.epochs=2"])
    assert ckpt.read_json(run / ckpt.STATE)["epoch"] == 2


def test_a_full_disk_in_the_middle_of_a_checkpoint_file(tmp_path, monkeypatch, one_thread):
    """ENOSPC after half of a file is written: the run stops naming epoch 2, epoch 1 stays whole."""
    from hybridrnn.api import train_run
    from hybridrnn.train import checkpoint as ckpt

    run = tmp_path / "run"
    real_write_bytes = pathlib.Path.write_bytes
    full = {"on": False}

    def half_then_full(self, data):
        if full["on"] and self.parent == run:
            with builtins.open(self, "wb") as f:
                f.write(bytes(data)[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real_write_bytes(self, data)

    monkeypatch.setattr(pathlib.Path, "write_bytes", half_then_full)
    callback = _AfterEpoch(1, lambda: full.update(on=True))
    with pytest.raises(HybridRNNError) as caught:
        train_run({**FORECAST, "train": {**FORECAST["train"], "epochs": 3}}, out=run, callbacks=[callback])
    message = str(caught.value)
    assert "cannot write the checkpoint of epoch 2" in message and "No space left on device" in message
    assert "(errno 28)" in message and "the last good checkpoint (epoch 1)" in message
    assert ".tmp-" not in message                                  # the real file, not the temporary one
    assert not [p for p in run.iterdir() if ".tmp-" in p.name]     # the half-written file is removed
    full["on"] = False
    assert ckpt.read_json(run / ckpt.STATE)["epoch"] == 1
    loaded = load(run)
    assert loaded.predict("bundled:seattle_weather").shape[0] > 0
    # the CLI shows it as one line, exit code 2
    from hybridrnn import cli

    assert cli._message(caught.value).startswith("training stopped: cannot write the checkpoint of epoch 2")


def test_os_errors_name_the_operation_and_the_real_file():
    from hybridrnn.cli import _message

    tmp = OSError(errno.EROFS, "Read-only file system", "/data/out/.p.csv.tmp-123")
    assert _message(tmp) == "cannot write /data/out/p.csv: Read-only file system (errno 30)"
    missing = FileNotFoundError(errno.ENOENT, "No such file or directory", "/data/in.csv")
    assert _message(missing) == "cannot find /data/in.csv: No such file or directory (errno 2)"
    denied = PermissionError(errno.EACCES, "Permission denied", "/data/in.csv")
    assert _message(denied) == "cannot open /data/in.csv: Permission denied (errno 13)"


def test_a_plain_value_error_is_a_bug_with_its_traceback(monkeypatch, tmp_path):
    """Only the user's errors are one clean line; a ValueError from inside the library shows its traceback."""
    import hybridrnn.api as api

    def broken(*args, **kwargs):
        raise ValueError("an internal bug")

    monkeypatch.setattr(api, "load_config", broken)
    result = CliRunner().invoke(app, ["config", "show", str(_yaml(tmp_path, FORECAST))])
    assert result.exit_code != 2 and isinstance(result.exception, ValueError)


def test_help_shows_no_type_for_flags_and_evaluate_says_yes_no():
    result = CliRunner().invoke(app, ["evaluate", "--help"], terminal_width=120)
    assert result.exit_code == 0 and "--json" in result.output and "<bool>" not in result.output
    assert "<str>" in result.output                    # options that take a value still show it
    from hybridrnn.cli import _metric_label, _metric_value

    assert _metric_value("beats_baselines", 1.0) == "yes" and _metric_value("test_beats_baselines", 0.0) == "no"
    assert _metric_value("mae", 1.0) == "1"
    assert _metric_label("loss", 0.25, {"scaled_mse": 0.25, "mae": 3.0}) == "loss (training objective, = scaled_mse)"
