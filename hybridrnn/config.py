"""The typed configuration schema: what a YAML file can say.

Every task config subclasses :class:`RunConfig` and adds its own ``data`` (and e.g. ``window``) sections.
Unknown keys are errors (``extra="forbid"``). Loading, ``--set`` overrides and error messages live here too:

>>> from hybridrnn.api.registry import load_config    # dispatches on ``task:`` to the task's config class
>>> cfg = load_config("configs/x.yaml", overrides=["train.lr=0.003"])   # a RunConfig subclass
>>> print(config_to_yaml(cfg))                                          # every default filled in

Errors (unknown keys, wrong types, bad YAML, unknown task) are :class:`ConfigError` (a ``ValueError``) with one
line per problem naming the key's path (``train.lrr``), its line in the file and the closest valid key.
"""
from __future__ import annotations

import difflib
import types
import typing
from pathlib import Path
from typing import Any, Iterable, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


from hybridrnn.errors import ConfigError, SpecError  # ConfigError re-exported: the config schema's error
from hybridrnn.nn.spec import parse_spec


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(Section):
    """The network: an encoder spec from ``hybridrnn.nn`` plus options."""

    encoder: str = Field("lstm:64", description="encoder spec, e.g. 'lstm:64', 'lstm:64>gru:64', '(lstm:64|gru:64)'")
    attention: Optional[Literal["additive", "dot", "general", "self"]] = None
    attention_heads: int = Field(1, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout between layers and before the head")
    locked_dropout: bool = Field(False, description="make the dropout between layers variational: one mask per "
                                                    "sequence for every step (AWD-LSTM)")
    recurrent_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="variational dropout on h (custom path)")
    layer_norm: bool = False
    coupled: bool = Field(False, description="LSTM coupled input-forget gate f = 1 - i")
    reset_after: bool = Field(True, description="GRU: reset applied after the recurrent matmul (torch form)")
    init: Literal["torch", "xavier_orthogonal", "chrono"] = "xavier_orthogonal"
    chrono_tmax: Optional[float] = Field(None, gt=2.0, description="init 'chrono': the longest dependency to "
                                                                   "remember, in steps (Tallec & Ollivier 2018)")
    forget_bias: Optional[float] = 1.0
    fusion: Literal["concat", "sum", "gate"] = "concat"
    share_input_projection: bool = False
    tie_layers: bool = False
    path: Literal["auto", "fused", "custom"] = "auto"
    weight_drop: float = Field(0.0, ge=0.0, lt=1.0, description="DropConnect on every LSTM/GRU hidden-to-hidden "
                               "matrix, one mask per forward (AWD-LSTM; language model and classifier)")
    pretrained: Optional[str] = Field(None, description="classifier: a language-model (or classifier) run "
                                      "directory whose vocabulary, embedding and encoder weights are loaded")

    @field_validator("encoder")
    @classmethod
    def _spec_parses(cls, value: str) -> str:
        # a malformed spec fails when the config is read (`hybridrnn config show` too), not when a model is built
        try:
            parse_spec(value)
        except SpecError as exc:
            raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _chrono_needs_tmax(self) -> "ModelConfig":
        if self.init == "chrono" and self.chrono_tmax is None:
            raise ValueError("init: chrono needs chrono_tmax, the longest dependency to remember in steps "
                             "(e.g. the sequence length)")
        return self


class TrainConfig(Section):
    """Optimisation and the training loop."""

    epochs: int = Field(20, ge=1)
    batch_size: int = Field(64, ge=1, description="global batch size (split over processes under torchrun)")
    lr: float = Field(1e-3, gt=0.0)
    optimizer: Literal["adam", "adamw", "sgd", "nt_asgd"] = Field(
        "adam", description="nt_asgd: plain SGD (no momentum), switched to averaged SGD when the validation "
                            "metric stops improving (non-monotone trigger, Merity et al. 2018)")
    nt_asgd_interval: int = Field(5, ge=1, description="nt_asgd: average once the validation metric is worse "
                                  "than the best of all epochs but the last n")
    lr_decay_per_layer: Optional[float] = Field(None, ge=1.0, description="discriminative learning rates: the "
                                                "layer group k below the top trains with lr / decay**k "
                                                "(ULMFiT: 2.6); None: one rate")
    unfreeze: Optional[Union[Literal["gradual"], list[int]]] = Field(
        None, description="gradual unfreezing by layer groups, top (head) down: a list of the 1-based epochs "
                          "from which each group trains (groups past the list: its last epoch), or 'gradual' "
                          "(one more group per epoch); None: everything trains from the start")
    weight_decay: float = Field(0.0, ge=0.0)
    momentum: float = Field(0.9, ge=0.0, description="SGD momentum")
    schedule: Literal["none", "step", "cosine", "plateau"] = "none"
    step_size: int = Field(10, ge=1, description="step schedule: epochs between decays")
    gamma: float = Field(0.5, gt=0.0, le=1.0, description="step / plateau schedule: lr multiplier per decay")
    plateau_patience: int = Field(2, ge=0, description="plateau schedule: epochs without improvement before decay")
    min_lr: float = Field(0.0, ge=0.0, description="cosine / plateau schedule: lower bound of the lr")
    warmup_epochs: int = Field(0, ge=0, description="linear warm-up from lr/100 to lr over this many epochs (per step)")
    clip_norm: Optional[float] = Field(1.0, gt=0.0, description="clip the global gradient norm; None disables")
    patience: Optional[int] = Field(None, ge=1, description="early stopping patience in epochs; None disables")
    min_delta: float = Field(0.0, ge=0.0, description="early stopping: smallest change that counts as better")
    seed: int = 0
    bf16: bool = Field(False, description=(
        "bfloat16 autocast for forward and loss (CUDA, or a CPU with AMX / AVX512-BF16; refused before training "
        "elsewhere). Master weights, gradients and optimizer state stay float32. On CPU the matmuls that were "
        "measured faster in bf16 run in it: linear layers and heads, the recurrent layers' hoisted input "
        "projection, and the recurrent weight gradient (one matmul over all steps); the recurrence itself "
        "(per-step products, gate maths, cell and hidden state) stays float32, so an auto LSTM trains on the "
        "compiled custom path (oneDNN's bf16 LSTM rounds the cell state to bf16). Test metrics stayed within the "
        "float32 seed spread (ETTh1, TREC); the speed-up at B32 H128 T200 is modest, because float32 already runs "
        "on oneDNN at its full speed (benchmarks/results/bf16.md)"))
    device: str = Field("auto", description="'auto' (cuda if available), 'cpu', 'cuda', 'cuda:1', ...")
    num_threads: Optional[int] = Field(None, ge=1, description="torch intra-op threads; None keeps torch's")
    keep_freed_memory: bool = Field(True, description=(
        "on the CPU, keep freed memory in the process heap (glibc mallopt) so that each training step reuses the "
        "last step's buffers instead of faulting in fresh pages: up to 1.6x faster and steadier steps measured on "
        "2-core VMs (benchmarks/results/allocator.md); the heap then keeps up to the run's peak of freed memory"))
    tensorboard: bool = Field(False, description="also log to RUN/tensorboard (needs the 'tensorboard' extra)")
    plots: bool = Field(True, description="write learning_curve.png and the task's plots after training")
    progress: Literal["auto", "bar", "plain", "none"] = Field(
        "auto", description="'auto': a progress bar on a terminal, one line per epoch otherwise")

    @model_validator(mode="after")
    def _check_unfreeze(self) -> "TrainConfig":
        u = self.unfreeze
        if isinstance(u, list) and (not u or any(e < 1 for e in u) or any(b < a for a, b in zip(u, u[1:]))):
            raise ValueError(f"train.unfreeze must be 'gradual' or a non-empty list of epochs >= 1 that never "
                             f"decreases (head first), got {u}")
        return self


class RunConfig(Section):
    """Base of every task config. Subclasses set ``task: Literal[...]`` and add their data sections."""

    task: str
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)

    @model_validator(mode="before")
    @classmethod
    def _no_null_sections(cls, data: Any) -> Any:
        # `train:` with nothing under it is YAML null; treat it as "all defaults" rather than a type error
        if isinstance(data, dict):
            return {k: ({} if v is None and _is_section(cls.model_fields.get(k)) else v) for k, v in data.items()}
        return data


def _is_section(field) -> bool:
    return field is not None and isinstance(field.annotation, type) and issubclass(field.annotation, Section)


# ---------------------------------------------------------------------------------------------------------
# loading


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from ``path`` with ``yaml.safe_load`` (no tags that build objects)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a folder, not a YAML file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text (is it a YAML file?)") from None
    return parse_yaml(text, source=str(path))


#: the deepest nesting a config may have (the schema needs 3-4 levels)
YAML_MAX_DEPTH = 50
#: the most values (mappings, lists and scalars, counted through every alias) a config may expand to
YAML_MAX_VALUES = 100_000


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key written twice in one mapping (YAML would keep the last silently)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                if isinstance(key_node, yaml.ScalarNode):
                    key = (key_node.tag, key_node.value)
                    if key in seen:
                        raise yaml.constructor.ConstructorError(
                            "while constructing a mapping", node.start_mark,
                            f"found the key {key_node.value!r} twice (first on line {seen[key] + 1})",
                            key_node.start_mark)
                    seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def _check_shape(data: Any, source: str) -> None:
    """ConfigError when ``data`` nests deeper than YAML_MAX_DEPTH, refers to itself (a recursive alias) or
    expands (through aliases) to more than YAML_MAX_VALUES values. Iterative: no recursion of its own."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    count = 0
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > YAML_MAX_VALUES:
            raise ConfigError(f"{source}: the config expands to more than {YAML_MAX_VALUES:,} values (through "
                              f"YAML aliases?); a config is a few sections of keys")
        if isinstance(node, (dict, list, tuple, set, frozenset)):
            if depth > YAML_MAX_DEPTH:
                raise ConfigError(f"{source}: the config nests more than {YAML_MAX_DEPTH} levels deep (or an "
                                  f"alias refers to itself); a config is a few sections of keys")
            children = list(node.keys()) + list(node.values()) if isinstance(node, dict) else list(node)
            stack.extend((child, depth + 1) for child in children)


def parse_yaml(text: str, source: str = "<config>") -> dict[str, Any]:
    """``yaml.safe_load`` of ``text``, which must be a mapping; errors name ``source`` and the line.

    Every problem is a :class:`ConfigError`: YAML syntax, a key written twice in one mapping, a value its tag
    cannot build (``!!int 0x``, the date ``2020-13-45``), Python object tags (never loaded), nesting deeper than
    :data:`YAML_MAX_DEPTH` (also when the parser itself runs out of stack), a self-referencing alias and aliases
    that expand to more than :data:`YAML_MAX_VALUES` values.
    """
    if not isinstance(text, str):
        raise TypeError(f"parse_yaml expects the YAML text as a str, got {type(text).__name__}")
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        if "python/" in str(exc):
            problem = f"{problem} (Python object tags are never loaded: configs are plain YAML data)"
        raise ConfigError(f"{source}{where}: not valid YAML: {problem}") from None
    except RecursionError:
        raise ConfigError(f"{source}: the config nests too deeply to read (more than {YAML_MAX_DEPTH} levels "
                          f"are never needed)") from None
    except (ValueError, TypeError, OverflowError, AttributeError, LookupError) as exc:
        # a tag's constructor on a bad value: !!int 0x (ValueError), !!bool maybe (KeyError), 2020-13-45 ...
        shown = f"{type(exc).__name__} {exc}" if isinstance(exc, LookupError) else str(exc)
        raise ConfigError(f"{source}: not valid YAML: a value cannot be read ({shown})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a config must be a YAML mapping (key: value lines), got {type(data).__name__}")
    _check_shape(data, source)
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.lr=0.003"`` -> ``(["train", "lr"], 0.003)``; the value is parsed as a YAML scalar/flow value."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE with a dotted key, e.g. --set train.lr=0.003")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {text!r}: the value is not valid YAML ({str(exc).splitlines()[0]})") from None
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """A copy of ``data`` with each ``KEY=VALUE`` override applied in order (later ones win)."""
    import copy

    data = copy.deepcopy(data)
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for i, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                where = ".".join(path[: i + 1])
                raise ConfigError(f"--set {text!r}: {where} is a value ({child!r}), not a section with keys")
            node = child
        node[path[-1]] = value
    return data


#: top-level sections read by ``hybridrnn compare`` / ``hybridrnn tune`` (they describe several runs); one run's
#: config leaves them out, so the same file serves train, compare and tune
EXPERIMENT_SECTIONS = ("compare", "tune")


def config_to_yaml(config: RunConfig) -> str:
    """The resolved config (every default filled in) as YAML, in field order."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, default_flow_style=False)


# ---------------------------------------------------------------------------------------------------------
# error messages


def format_validation_error(exc: ValidationError, cls: type[BaseModel], source: str, *, text: str | None = None,
                            overridden: Iterable[str] = ()) -> str:
    """One line per problem: ``source line N: train.lrr: unknown key (did you mean 'lr'?)``."""
    lines = _key_lines(text) if text else {}
    overridden = set(overridden)
    problems = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        path = ".".join(loc)
        if path in overridden:
            where = f"--set {path}"
        elif path in lines:
            where = f"{source} line {lines[path]}"
        else:
            where = source
        if err["type"] == "extra_forbidden":
            valid = _valid_keys(cls, loc[:-1])
            close = difflib.get_close_matches(loc[-1], valid, n=1, cutoff=0.5)
            hint = f"did you mean {'.'.join(loc[:-1] + [close[0]])!r}?" if close else f"valid keys: {', '.join(valid)}"
            problems.append(f"{where}: {path}: unknown key ({hint})")
        elif err["type"] == "missing":
            problems.append(f"{where}: {path}: missing required key")
        else:
            message = err["msg"].removeprefix("Value error, ")
            if "\n" in message:      # a message with its own layout (a spec with a caret): keep it, indented
                problems.append(f"{where}: {path}: " + message.replace("\n", "\n    "))
            else:
                problems.append(f"{where}: {path}: {message}, got {err.get('input')!r}")
    head = f"invalid config {source}" + (f" ({len(problems)} problems)" if len(problems) > 1 else "")
    return head + ":\n  " + "\n  ".join(problems)


def _valid_keys(cls: type[BaseModel], loc: list[str]) -> list[str]:
    """Field names of the section at ``loc`` inside ``cls`` (empty if it cannot be resolved)."""
    model: Any = cls
    for part in loc:
        field = model.model_fields.get(part) if _is_model(model) else None
        if field is None:
            return []
        model = _model_in(field.annotation)
    return list(model.model_fields) if _is_model(model) else []


def _is_model(obj: Any) -> bool:
    return isinstance(obj, type) and issubclass(obj, BaseModel)


def _model_in(annotation: Any) -> Any:
    """The BaseModel class inside an annotation such as ``Optional[DataConfig]``."""
    if _is_model(annotation):
        return annotation
    if typing.get_origin(annotation) in (Union, types.UnionType):
        for arg in typing.get_args(annotation):
            if _is_model(arg):
                return arg
    return None


def _key_lines(text: str) -> dict[str, int]:
    """Map of dotted key path -> 1-based line number of that key in YAML ``text`` (mappings only)."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return {}
    out: dict[str, int] = {}

    def walk(node, prefix):
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                path = f"{prefix}.{key_node.value}" if prefix else str(key_node.value)
                out[path] = key_node.start_mark.line + 1
                walk(value_node, path)

    walk(root, "")
    return out
