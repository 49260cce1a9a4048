"""The Python API: train (:func:`fit`), load (:func:`load`) and use (:class:`Run`) models; the task registry
and the config loader; the one training pipeline (:func:`train_run`) that the CLI, compare and tune share."""
from hybridrnn.api.pipeline import Trained, default_run_dir, train_run
from hybridrnn.api.registry import build_config, coerce_config, get_task_class, load_config, register_task, task_names
from hybridrnn.api.run import Run, fit, load, load_run, metrics_table
from hybridrnn.api.rundir import read_run_config

__all__ = ["Run", "Trained", "build_config", "coerce_config", "default_run_dir", "fit", "get_task_class", "load",
           "load_config", "load_run", "metrics_table", "read_run_config", "register_task", "task_names", "train_run"]
