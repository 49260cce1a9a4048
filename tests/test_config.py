"""Config loading: exact error messages for unknown keys / wrong types, --set overrides, resolved output."""
from __future__ import annotations

import textwrap

import pytest
import yaml

from hybridrnn.config import ConfigError, TrainConfig, apply_overrides, config_to_yaml, parse_override
from hybridrnn.api import coerce_config, load_config


def write(tmp_path, text: str):
    path = tmp_path / "cfg.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_unknown_key_names_path_line_and_closest_key(tmp_path, toy_task):
    path = write(tmp_path, """\
        task: toy
        model:
          encoder: gru:8
        train:
          epochs: 3
          lrr: 0.01
        """)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == (f"invalid config {path}:\n"
                               f"  {path} line 6: train.lrr: unknown key (did you mean 'train.lr'?)")


def test_wrong_type_names_path_line_and_value(tmp_path, toy_task):
    path = write(tmp_path, """\
        task: toy
        train:
          epochs: ten
        """)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == (f"invalid config {path}:\n  {path} line 3: train.epochs: Input should be a valid "
                               "integer, unable to parse string as an integer, got 'ten'")


def test_several_problems_are_reported_together(tmp_path, toy_task):
    path = write(tmp_path, "task: toy\nmodle: {encoder: 'gru:8'}\ntrain: {lr: 0, batch_size: -1}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert "(3 problems)" in msg
    assert "modle: unknown key (did you mean 'model'?)" in msg
    assert "train.lr: Input should be greater than 0, got 0" in msg
    assert "train.batch_size: Input should be greater than or equal to 1, got -1" in msg


def test_unknown_key_in_a_task_section_suggests_from_that_section(tmp_path, toy_task):
    path = write(tmp_path, "task: toy\ndata:\n  n_trian: 10\n")
    with pytest.raises(ConfigError, match=r"line 3: data.n_trian: unknown key \(did you mean 'data.n_train'\?\)"):
        load_config(path)


def test_unknown_task_suggests_closest(tmp_path, toy_task):
    path = write(tmp_path, "task: forcast\n")
    with pytest.raises(ConfigError, match=r"unknown task 'forcast' \(did you mean 'forecast'\?\)"):
        load_config(path)


def test_missing_task_key(tmp_path, toy_task):
    path = write(tmp_path, "train: {epochs: 2}\n")
    with pytest.raises(ConfigError, match="missing key 'task'"):
        load_config(path)


def test_overrides_are_yaml_scalars_and_later_ones_win(tmp_path, toy_task):
    path = write(tmp_path, "task: toy\ntrain: {lr: 0.1}\n")
    cfg = load_config(path, ["train.lr=0.003", "train.epochs=7", "train.clip_norm=null", "model.encoder=lstm:4",
                             "train.lr=3e-4", "data.nan_at=[2, 3]"])
    assert cfg.train.lr == 3e-4 and cfg.train.epochs == 7 and cfg.train.clip_norm is None
    assert cfg.model.encoder == "lstm:4" and cfg.data.nan_at == (2, 3)


def test_override_errors_name_the_set_option(tmp_path, toy_task):
    path = write(tmp_path, "task: toy\n")
    with pytest.raises(ConfigError, match=r"--set train.lrr: train.lrr: unknown key \(did you mean 'train.lr'\?\)"):
        load_config(path, ["train.lrr=0.1"])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_override("train.lr")
    with pytest.raises(ConfigError, match="train.lr is a value"):
        apply_overrides({"train": {"lr": 0.1}}, ["train.lr.x=1"])


def test_resolved_config_has_every_default_and_round_trips(tmp_path, toy_task):
    path = write(tmp_path, "task: toy\ntrain:\n")          # an empty section means all defaults
    cfg = load_config(path)
    text = config_to_yaml(cfg)
    data = yaml.safe_load(text)
    assert set(data["train"]) == set(TrainConfig.model_fields)
    assert data["train"]["lr"] == TrainConfig().lr
    again = write(tmp_path, text)
    assert load_config(again) == cfg


def test_python_object_tag_is_never_constructed(tmp_path, toy_task):
    marker = tmp_path / "executed"
    path = write(tmp_path, f"task: toy\ntrain: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError, match="line 2: not valid YAML.*Python object tags are never loaded"):
        load_config(path)
    assert not marker.exists()


def test_not_a_mapping_and_missing_file(tmp_path, toy_task):
    with pytest.raises(ConfigError, match="must be a YAML mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


# ---- the command line: `hybridrnn config show`, --set, --help ----------------------------------------------


def cli(*args):
    from typer.testing import CliRunner

    from hybridrnn.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def test_config_show_prints_the_resolved_config_with_overrides(tmp_path, toy_task):
    path = write(tmp_path, "task: toy\nmodel: {encoder: 'gru:8'}\ntrain: {lr: 0.1}\n")
    result = cli("config", "show", path, "--set", "train.lr=0.003", "--set", "train.epochs=7")
    assert result.exit_code == 0, result.output
    assert result.stdout == config_to_yaml(load_config(path, ["train.lr=0.003", "train.epochs=7"]))
    shown = yaml.safe_load(result.stdout)
    assert shown["train"]["lr"] == 0.003 and shown["train"]["epochs"] == 7
    assert set(shown["train"]) == set(TrainConfig.model_fields) and shown["data"]["n_train"] == 96


def test_config_show_reports_errors_cleanly_with_exit_code_2(tmp_path, toy_task):
    path = write(tmp_path, "task: toy\ntrain:\n  lrr: 0.01\n")
    result = cli("config", "show", path)
    assert result.exit_code == 2
    assert result.stderr == (f"error: invalid config {path}:\n"
                             f"  {path} line 3: train.lrr: unknown key (did you mean 'train.lr'?)\n")
    assert "Traceback" not in result.output
    result = cli("config", "show", write(tmp_path, "task: toy\n"), "--set", "train.epochs=ten")
    assert result.exit_code == 2
    assert result.stderr.endswith("--set train.epochs: train.epochs: Input should be a valid integer, unable to "
                                  "parse string as an integer, got 'ten'\n")


@pytest.mark.parametrize("command", [[], ["train"], ["evaluate"], ["predict"], ["generate"], ["compare"], ["tune"],
                                     ["config"], ["config", "show"], ["datasets"]])
def test_help_on_every_command(command):
    result = cli(*command, "--help")
    assert result.exit_code == 0, result.output
    assert f"Usage: hybridrnn {' '.join(command)}".rstrip() in " ".join(result.stdout.split())


def test_chrono_init_from_a_config_reaches_the_encoder():
    """``init: chrono`` needs ``chrono_tmax``; given one, the task's encoder gets the chrono gate biases."""
    import math

    from pydantic import ValidationError

    from hybridrnn.config import ModelConfig
    from hybridrnn.nn import build_encoder
    from hybridrnn.tasks._common import encoder_options

    with pytest.raises(ValidationError, match="chrono_tmax"):
        ModelConfig(encoder="lstm:8", init="chrono")
    model = ModelConfig(encoder="lstm:8>gru:8", init="chrono", chrono_tmax=50, forget_bias=None)
    lstm, gru = build_encoder(model.encoder, 3, **encoder_options(model)).blocks
    b_f = (lstm.bias_ih_l0 + lstm.bias_hh_l0)[8:16].detach()
    b_z = (gru.bias_ih_l0 + gru.bias_hh_l0)[8:16].detach()
    for b in (b_f, b_z):   # log(u), u ~ U[1, 49]: positive, and not the zero bias of xavier_orthogonal
        assert 0.0 <= b.min() and b.max() <= math.log(49) and b.max() > 1.0


def test_one_file_serves_train_compare_and_tune(tmp_path, toy_task):
    """A run's config leaves the ``compare:`` / ``tune:`` sections to those commands; other unknown top-level
    keys are still errors."""
    path = write(tmp_path, """\
        task: toy
        model: {encoder: gru:8}
        compare: {models: ["gru:8", "lstm:8"], seeds: 2}
        tune: {trials: 3}
        """)
    config = load_config(path)
    assert config.model.encoder == "gru:8" and "compare" not in config.model_dump()
    from hybridrnn.experiments.compare import experiment_sections
    assert experiment_sections(path) == {"compare": {"models": ["gru:8", "lstm:8"], "seeds": 2}, "tune": {"trials": 3}}
    as_dict = yaml.safe_load(path.read_text())                  # the Python API's dicts behave the same
    assert coerce_config(as_dict).model.encoder == "gru:8"
    path.write_text(path.read_text() + "comparee: {}\n")
    with pytest.raises(ConfigError, match="comparee: unknown key"):
        load_config(path)


def test_relative_data_paths_are_taken_from_the_config_folder_first(tmp_path, monkeypatch):
    (tmp_path / "project" / "data").mkdir(parents=True)
    (tmp_path / "project" / "data" / "prices.csv").write_text("Date,Close\n2020-01-01,1\n")
    (tmp_path / "project" / "corpus.txt").write_text("to be or not to be\n")
    forecast = tmp_path / "project" / "forecast.yaml"
    forecast.write_text("task: forecast\ndata: {path: data/prices.csv, time_column: Date, target: [Close]}\n")
    lm = tmp_path / "project" / "lm.yaml"
    lm.write_text("task: language_model\ndata: {train: corpus.txt, level: char}\n")
    monkeypatch.chdir(tmp_path)                                  # neither path exists from here
    assert load_config(forecast).data.path == str(tmp_path / "project" / "data" / "prices.csv")
    assert load_config(lm).data.train == str(tmp_path / "project" / "corpus.txt")
    (tmp_path / "corpus2.txt").write_text("x")                   # not beside the config: kept, found from the cwd
    lm.write_text("task: language_model\ndata: {train: corpus2.txt, level: char}\n")
    assert load_config(lm).data.train == "corpus2.txt"


def test_a_malformed_encoder_spec_fails_when_the_config_is_read(tmp_path):
    path = write(tmp_path, 'task: forecast\ndata: {path: x.csv, target: [y]}\nmodel: {encoder: "(lstm:8|>gru:8"}\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "line 3: model.encoder: invalid encoder spec" in message and "(lstm:8|>gru:8\n" in message
    assert message.splitlines()[-1].strip() == "^" and "Value error" not in message
