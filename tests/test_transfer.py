"""Pre-training and transfer (ULMFiT): model.pretrained, gradual unfreezing, discriminative rates, concat pooling."""
from __future__ import annotations

import random

import pytest
import torch

from hybridrnn.api import train_run
from hybridrnn.errors import ConfigError
from hybridrnn.tasks.classify import ClassifyTask
from hybridrnn.tasks.classify_config import ClassifyConfig
from hybridrnn.train.callbacks import Callback
from hybridrnn.train.checkpoint import read_safetensors

pytestmark = pytest.mark.usefixtures("one_thread")

POS = [f"p{i}" for i in range(10)]
NEG = [f"n{i}" for i in range(10)]
FILL = [f"f{i}" for i in range(20)]


def _sentence(rng: random.Random, words: list[str], length: int = 8) -> str:
    return " ".join(rng.choice(words) if rng.random() < 0.5 else rng.choice(FILL) for _ in range(length))


def _lm_corpus(path, lines=1500, seed=0):
    """Unlabelled text: each line is all-positive or all-negative (sentiment words among fillers)."""
    rng = random.Random(seed)
    path.write_text("\n".join(_sentence(rng, rng.choice([POS, NEG])) for _ in range(lines)) + "\n")
    return path


def _labelled(path, n, words_pos, words_neg, seed):
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        rows.append(f"{label} {_sentence(rng, words_pos if label else words_neg)}")
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm")
    cfg = {"task": "language_model", "data": {"train": str(_lm_corpus(root / "corpus.txt"))},
           "model": {"encoder": "gru:16", "weight_drop": 0.1},
           "lm": {"bptt": 16, "embedding_dim": 16},
           "train": {"epochs": 4, "batch_size": 16, "lr": 0.01, "seed": 0, "progress": "none", "plots": False,
                     "num_threads": 1}}
    return train_run(cfg, out=root / "run").run_dir


def _clf_cfg(tmp_path, pretrained=None, **overrides) -> dict:
    train = _labelled(tmp_path / "train.txt", 200, POS[:5], NEG[:5], seed=1)     # seen words only
    test = _labelled(tmp_path / "test.txt", 200, POS[5:], NEG[5:], seed=2)       # unseen words only
    cfg = {"task": "classify", "data": {"kind": "text", "train": str(train), "test": str(test), "val_fraction": 0.2},
           "model": {"encoder": "gru:16", "pretrained": str(pretrained) if pretrained else None},
           "classifier": {"embedding_dim": 16, "pooling": "concat"},
           "train": {"epochs": 6, "batch_size": 20, "lr": 0.01, "seed": 0, "progress": "none", "plots": False,
                     "num_threads": 1}}
    for key, value in overrides.items():
        section, _, name = key.partition("__")
        cfg[section][name] = value
    return cfg


def _task(cfg) -> ClassifyTask:
    task = ClassifyTask(ClassifyConfig.model_validate(cfg))
    task.setup()
    return task


def test_loading_copies_every_embedding_and_encoder_tensor(tmp_path, lm_run):
    task = _task(_clf_cfg(tmp_path, lm_run))
    source, _ = read_safetensors(lm_run / "model.safetensors")
    assert task.encoder.vocabulary.itos[:2] == ["<pad>", "<unk>"] and "p9" in task.encoder.vocabulary.stoi
    torch.manual_seed(0)
    model = task.build_model()
    copied = [k for k in model.state_dict() if k.startswith(("embedding.", "encoder."))]
    assert len(copied) == 5            # embedding + 4 GRU tensors
    for name in copied:
        assert torch.equal(model.state_dict()[name], source[name]), name
    scratch = _task(_clf_cfg(tmp_path)).build_model()
    assert not torch.equal(scratch.encoder.weight_hh_l0, source["encoder.weight_hh_l0"])


def test_size_vocabulary_and_tokenizer_mismatches_are_clear(tmp_path, lm_run):
    with pytest.raises(ConfigError, match=r"encoder\.weight_hh_l0 is \(48, 16\) in the run, \(96, 32\).*model\.encoder 'gru:16'"):
        _task(_clf_cfg(tmp_path, lm_run, model__encoder="gru:32")).build_model()
    with pytest.raises(ConfigError, match=r"embedding\.weight is \(\d+, 16\) in the run, \(\d+, 8\).*embedding_dim 16"):
        _task(_clf_cfg(tmp_path, lm_run, classifier__embedding_dim=8)).build_model()
    with pytest.raises(ConfigError, match=r"split_punctuation=True, data\.tokenizer\.split_punctuation is False"):
        _task(_clf_cfg(tmp_path, lm_run) | {"data": {**_clf_cfg(tmp_path)["data"],
                                                     "tokenizer": {"split_punctuation": False}}})
    with pytest.raises(ConfigError, match="model.pretrained: .* is not a run directory"):
        _task(_clf_cfg(tmp_path, tmp_path / "nowhere"))
    # a classifier whose vocabulary differs from the run's (one token swapped) is refused, naming the id
    task = _task(_clf_cfg(tmp_path, lm_run))
    itos = list(task.encoder.vocabulary.itos)
    itos[5], itos[6] = itos[6], itos[5]
    task.encoder.vocabulary.itos = itos
    with pytest.raises(ConfigError, match=r"vocabulary mismatch at id 5"):
        task.build_model()


class _Snapshots(Callback):
    def __init__(self):
        self.by_epoch = {}

    def on_fit_start(self, trainer):
        self.by_epoch[0] = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
        self.lrs = [g["lr"] for g in trainer.optimizer.param_groups]

    def on_epoch_end(self, trainer, record):
        self.by_epoch[trainer.epoch] = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}


def test_gradual_unfreezing_keeps_frozen_parameters_bit_identical(tmp_path, lm_run):
    snaps = _Snapshots()
    cfg = _clf_cfg(tmp_path, lm_run, train__epochs=3, train__unfreeze=[1, 2, 3], train__lr_decay_per_layer=2.6,
                   train__optimizer="adamw", train__weight_decay=0.01)
    trained = train_run(cfg, out=tmp_path / "run", callbacks=[snaps])
    s = snaps.by_epoch
    # groups (top down): head from epoch 1, the GRU from epoch 2, the embedding from epoch 3
    for name in ("embedding.weight",):
        assert torch.equal(s[1][name], s[0][name]) and torch.equal(s[2][name], s[0][name])
        assert not torch.equal(s[3][name], s[2][name])
    for name in ("encoder.weight_hh_l0", "encoder.weight_ih_l0", "encoder.bias_hh_l0"):
        assert torch.equal(s[1][name], s[0][name])
        assert not torch.equal(s[2][name], s[1][name])
    assert not torch.equal(s[1]["head.weight"], s[0]["head.weight"])
    # discriminative rates: lr / 2.6^k for the group k below the top (embedding, GRU, head)
    assert snaps.lrs == pytest.approx([0.01 / 2.6 ** 2, 0.01 / 2.6, 0.01])
    assert all(p.requires_grad for p in trained.model.parameters())       # given back after fitting


def test_pretraining_beats_training_from_scratch(tmp_path, lm_run):
    """Test sentences use only sentiment words the classifier never saw in training: the language model
    learned that p5..p9 behave like p0..p4, training from scratch cannot know."""
    from conftest import evaluate_run
    common = dict(train__lr_decay_per_layer=2.6, train__unfreeze="gradual")
    scratch = train_run(_clf_cfg(tmp_path), out=tmp_path / "scratch").run_dir
    tuned = train_run(_clf_cfg(tmp_path, lm_run, **common), out=tmp_path / "tuned").run_dir
    acc_scratch = evaluate_run(scratch)["accuracy"]
    acc_tuned = evaluate_run(tuned)["accuracy"]
    assert acc_tuned > 0.8 and acc_tuned > acc_scratch + 0.2, (acc_tuned, acc_scratch)
