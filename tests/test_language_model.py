"""Language model: tied parameter count, truncated BPTT, step() vs full forward, seeded generation, learning."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

import hybridrnn
from conftest import SHARED, needs_shared, train
from hybridrnn.api import coerce_config
from hybridrnn.errors import DataError, RunDirError
from hybridrnn.nn.language_model import LanguageModel, LockedDropout, sample_next
from hybridrnn.nn.tying import count_parameters
from hybridrnn.tasks.language_model import LanguageModelConfig, LanguageModelTask, stream_rows

SPECS = ["lstm:12", "gru:12", "lstm:12>gru:8", "(lstm:8|gru:8)", "lstm:8x2"]

# tiny models on a shared 2-core machine: one intra-op thread is many times faster than two
pytestmark = pytest.mark.usefixtures("one_thread")


# ---- parameters ------------------------------------------------------------------------------------------
def test_tied_parameter_count_by_hand():
    V, E, H = 50, 16, 16
    tied = LanguageModel(V, "lstm:16", embedding_dim=E, tie_weights=True)
    # embedding V*E = 800; LSTM 4H*(E + H) weights + 2*4H biases = 64*32 + 128 = 2176; output bias V = 50
    assert count_parameters(tied) == 800 + 2176 + 50 == 3026
    assert sum(p.numel() for p in tied.parameters()) == 3026          # the shared matrix is yielded once
    assert tied.output.weight is tied.embedding.weight
    untied = LanguageModel(V, "lstm:16", embedding_dim=E, tie_weights=False)
    # plus an output matrix H*V = 800
    assert count_parameters(untied) == 3026 + 800
    # sizes differ: E = 8, H = 16 -> a projection Linear(16, 8) = 16*8 + 8 = 136
    # embedding 400; LSTM 64*(8 + 16) + 128 = 1664; projection 136; output bias 50
    projected = LanguageModel(V, "lstm:16", embedding_dim=8, tie_weights=True)
    assert count_parameters(projected) == 400 + 1664 + 136 + 50 == 2250
    # a stacked hybrid: GRU 3H2*(H1 + H2) + 2*3H2 with H1 = 16, H2 = 8: 24*24 + 48 = 624, projection 8 -> E = 16: 0
    hybrid = LanguageModel(V, "lstm:16>gru:16", embedding_dim=16, tie_weights=True)
    # LSTM 2176 + GRU 3*16*(16+16) + 2*48 = 1536 + 96 = 1632
    assert count_parameters(hybrid) == 800 + 2176 + 1632 + 50


def test_bidirectional_encoder_is_rejected():
    with pytest.raises(ValueError, match="unidirectional"):
        LanguageModel(20, "bilstm:8", embedding_dim=8)


# ---- streaming step() ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", SPECS)
def test_step_matches_full_forward(spec):
    """Next-token distributions from step() one token at a time equal those of a full forward (float64)."""
    torch.manual_seed(0)
    model = LanguageModel(30, spec, embedding_dim=8).double().eval()
    tokens = torch.randint(0, 30, (2, 9))
    full, _ = model(tokens)
    state = None
    for t in range(tokens.shape[1]):
        logits, state = model.step(tokens[:, t], state)
        assert torch.allclose(torch.log_softmax(logits, -1), torch.log_softmax(full[:, t], -1), atol=1e-12, rtol=0)


def test_greedy_generation_equals_rerunning_the_prefix():
    torch.manual_seed(1)
    model = LanguageModel(25, "(lstm:8|gru:8)>gru:8", embedding_dim=8).double().eval()
    prompt = [3, 7, 1]
    generated = model.generate(prompt, 12, temperature=0)
    seq = list(prompt)
    for _ in range(12):
        logits, _ = model(torch.tensor([seq]))
        seq.append(int(logits[0, -1].argmax()))
    assert generated == seq[len(prompt):]


def test_generation_is_reproducible_with_a_seed():
    torch.manual_seed(0)
    model = LanguageModel(40, "lstm:16>gru:16", embedding_dim=8).eval()
    a = model.generate([1, 2], 50, temperature=1.0, top_k=10, generator=torch.Generator().manual_seed(7))
    b = model.generate([1, 2], 50, temperature=1.0, top_k=10, generator=torch.Generator().manual_seed(7))
    c = model.generate([1, 2], 50, temperature=1.0, top_k=10, generator=torch.Generator().manual_seed(8))
    assert a == b and a != c


def test_top_k_and_temperature():
    logits = torch.tensor([0.0, 3.0, 2.0, -1.0])
    g = torch.Generator().manual_seed(0)
    draws = {sample_next(logits, 1.0, top_k=2, generator=g) for _ in range(200)}
    assert draws == {1, 2}
    assert sample_next(logits, 0.0) == 1


def test_locked_dropout_shares_the_mask_over_time():
    drop = LockedDropout(0.5).train()
    y = drop(torch.ones(4, 10, 6))
    assert torch.equal(y, y[:, :1].expand_as(y))          # one mask per (sequence, feature), all steps
    assert set(y.unique().tolist()) <= {0.0, 2.0}
    assert torch.equal(drop.eval()(torch.ones(2, 3, 4)), torch.ones(2, 3, 4))


# ---- the task -------------------------------------------------------------------------------------------------
def _char_task(tmp_path: Path, text: str, encoder: str = "lstm:16", **lm) -> LanguageModelTask:
    (tmp_path / "corpus.txt").write_text(text, encoding="utf-8")
    cfg = {"task": "language_model", "data": {"train": str(tmp_path / "corpus.txt"), "tokenizer": "char"},
           "model": {"encoder": encoder}, "lm": {"bptt": 5, "embedding_dim": 8, **lm},
           "train": {"batch_size": 4, "seed": 0}}
    task = LanguageModelTask(coerce_config(cfg))
    task.setup()
    return task


def test_tbptt_detaches_the_state_between_batches(tmp_path):
    """Gradient of the second window's loss does not reach the first window: the embedding rows of tokens that
    occur only as inputs of window 1 get exactly zero gradient (untied, so the output layer does not touch them).
    The same computation with the state NOT detached does reach them (the check can fail)."""
    task = _char_task(tmp_path, "abcd" * 20, tie_weights=False)     # ids: a=2, b=3, c=4, d=5
    torch.manual_seed(0)
    model = task.build_model()
    windows = list(task.train_batches(0, torch.Generator()))
    assert windows[0][2] is True and all(w[2] is False for w in windows[1:])   # only the epoch start resets
    # window 1 reads only token 2, window 2 only token 4
    first = (torch.full((4, 5), 2), torch.full((4, 5), 3), True)
    second = (torch.full((4, 5), 4), torch.full((4, 5), 5), False)
    loss1, _ = task.training_step(model, first)
    carried = task._state
    assert carried[0].grad_fn is None and carried[1].grad_fn is None
    model.zero_grad()
    loss2, n = task.training_step(model, second)
    loss2.backward()
    grad = model.embedding.weight.grad
    assert n == 20 and float(grad[2].abs().sum()) == 0.0 and float(grad[4].abs().sum()) > 0.0
    # control: without detaching, window 2's loss reaches token 2's embedding
    model.zero_grad()
    _, state = model(first[0])
    logits, _ = model(second[0], state)
    F.cross_entropy(logits.reshape(-1, logits.shape[-1]), second[1].reshape(-1)).backward()
    assert float(model.embedding.weight.grad[2].abs().sum()) > 0.0


def test_train_windows_walk_the_rows_in_order(tmp_path):
    task = _char_task(tmp_path, "abcdefghijklmnopqrstuvwxyz" * 3)
    x, y, _, _ = stream_rows(task.ids["train"], 4)
    windows = list(task.train_batches(0, torch.Generator()))
    assert torch.equal(torch.cat([w[0] for w in windows], 1), x)
    assert torch.equal(torch.cat([w[1] for w in windows], 1), y)
    assert torch.equal(x[:, 1:], y[:, :-1])                  # targets are the next tokens
    assert len(windows) == task.num_train_batches()


def test_truncated_epochs_walk_on_through_the_stream(tmp_path):
    """windows_per_epoch = 3: epochs take windows 0-2, 3-5, ... and wrap round; only window 0 resets the state."""
    task = _char_task(tmp_path, "abcdefghijklmnopqrstuvwxyz" * 3, windows_per_epoch=3)
    task.config.lm.windows_per_epoch = None
    full = list(task.train_batches(0, torch.Generator()))
    total = len(full)
    assert total == 4   # 77 tokens -> 4 rows of 19 -> windows of 5: 4 windows
    task.config.lm.windows_per_epoch = 3
    assert task.num_train_batches() == 3
    seen = [w for epoch in range(3) for w in task.train_batches(epoch, torch.Generator())]
    expected = [full[k % total] for k in range(9)]
    for got, want in zip(seen, expected, strict=True):
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]) and got[2] == want[2]
    assert [w[2] for w in seen] == [k % total == 0 for k in range(9)]


def test_evaluation_scores_every_token_exactly(tmp_path):
    """stream_nll with rows (remainder included) equals a by-hand loop over the rows, each row one sequence."""
    task = _char_task(tmp_path, "the quick brown fox jumps over the lazy dog\n" * 3)
    torch.manual_seed(0)
    model = task.build_model().double().eval().requires_grad_(False)
    ids = task.ids["train"]
    rows = 5
    total, count = task.stream_nll(model, ids, rows, window=7)
    assert count == ids.numel() - 1
    n = (ids.numel() - 1) // rows
    expected = 0.0
    for r in range(rows):
        end = (r + 1) * n + (ids.numel() - 1 - rows * n if r == rows - 1 else 0)
        seq = ids[r * n:end + 1]
        logits, _ = model(seq[:-1].view(1, -1))
        expected += F.cross_entropy(logits[0], seq[1:], reduction="sum").item()
    assert total == pytest.approx(expected, rel=1e-10)


def test_word_level_eos_and_unknown(tmp_path):
    (tmp_path / "train.txt").write_text(" the cat sat \n the <unk> ran \n", encoding="utf-8")
    (tmp_path / "val.txt").write_text(" the dog sat \n", encoding="utf-8")
    cfg = {"task": "language_model", "data": {"train": str(tmp_path / "train.txt"), "val": str(tmp_path / "val.txt"),
                                              "tokenizer": {"level": "word", "split_punctuation": False}},
           "model": {"encoder": "gru:8"}}
    task = LanguageModelTask(coerce_config(cfg))
    task.setup()
    eos = task.eos_id
    tokens = task.encoder.vocabulary.decode(task.ids["train"].tolist())
    assert tokens == ["the", "cat", "sat", "<eos>", "the", "<unk>", "ran", "<eos>"]
    assert task.ids["val"].tolist()[1] == task.encoder.unk_id == 1 and task.ids["val"].tolist()[-1] == eos


def _lm_config(folder: Path, tokenizer, text: str, **data) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "corpus.txt").write_text(text, encoding="utf-8")
    return {"task": "language_model", "data": {"train": str(folder / "corpus.txt"), "tokenizer": tokenizer, **data},
            "model": {"encoder": "gru:16"}, "lm": {"bptt": 20, "embedding_dim": 16, "temperature": 1.0, "top_k": 5},
            "train": {"epochs": 2, "batch_size": 4, "lr": 0.01, "progress": "none"}}


def test_generation_streams_reproducibly_without_the_corpus(tmp_path):
    """A char-level run generates the same text for the same seed before and after its corpus is moved away
    (the vocabulary is saved); another seed gives other text; pieces stream one per token."""
    cfg = _lm_config(tmp_path / "data", "char", "to be or not to be, that is the question.\n" * 30)
    run_dir = train(cfg, out=tmp_path / "run")
    run = hybridrnn.load(run_dir)
    pieces = list(run.iter_generate("to be", 40, seed=3))
    assert len(pieces) == 40 and all(len(p) == 1 for p in pieces)
    before = [run.generate("to be", 40, seed=s) for s in (3, 4)]
    assert before[0] == "to be" + "".join(pieces) and before[0] != before[1]
    (tmp_path / "data").rename(tmp_path / "moved")
    after = hybridrnn.load(run_dir)
    assert [after.generate("to be", 40, seed=s) for s in (3, 4)] == before
    from typer.testing import CliRunner

    from hybridrnn.cli import app

    res = CliRunner().invoke(app, ["generate", str(run_dir), "--prompt", "to be", "--tokens", "40", "--seed", "3"])
    assert res.exit_code == 0 and res.stdout == before[0] + "\n", res.output
    # lm.temperature / lm.top_k are the defaults; explicit values override them
    greedy = after.generate("to be", 30, temperature=0.0)
    assert greedy == after.generate("to be", 30, temperature=0.0, seed=99) != after.generate("to be", 30, seed=99)
    with pytest.raises(DataError, match="corpus.txt"):
        after.metrics(split="val")
    assert after.metrics(tmp_path / "moved" / "corpus.txt")["loss"] < math.log(after.task.vocab_size)


class _FixedIds:
    """Stands in for a LanguageModel: 'generates' the ids it was given."""

    def __init__(self, ids):
        self.ids = ids

    def iter_generate(self, prompt_ids, n, temperature=1.0, top_k=None, generator=None):
        yield from self.ids[:n]


def test_generated_pieces_join_into_the_decoded_text(tmp_path):
    """Word level: words separated by spaces, <eos> as a newline and no space at a line start; subword level:
    each piece is what its token adds to the decoded line (no space inside a word)."""
    text = "the cat sat on the mat\nthe dog ran to the cat\n" * 20
    word = LanguageModelTask(LanguageModelConfig.model_validate(_lm_config(tmp_path / "w", "word", text)))
    word.setup()
    stoi, eos = word.encoder.vocabulary.stoi, word.eos_id
    ids = [stoi["sat"], stoi["on"], eos, stoi["the"], stoi["dog"]]
    assert "".join(word.generate(_FixedIds(ids), "the cat", 5)) == " sat on\nthe dog"
    assert list(word.generate(_FixedIds(ids[3:]), "", 2)) == ["the", " dog"]

    sub = LanguageModelTask(LanguageModelConfig.model_validate(
        _lm_config(tmp_path / "s", {"level": "subword", "subword_vocab_size": 100}, text)))
    sub.setup()
    ids = sub.encoder.encode("the dog sat on the mat")
    pieces = list(sub.generate(_FixedIds(ids + [sub.eos_id] + ids[:2]), "the cat", len(ids) + 3))
    assert "".join(pieces[:len(ids)]) == " the dog sat on the mat" and pieces[len(ids)] == "\n"
    assert "".join(pieces[len(ids) + 1:]) == sub.encoder.decode(ids[:2])


def test_loaded_vocabulary_is_used_not_refitted(tmp_path):
    """load_artifacts alone builds the model; setup afterwards reads new text with the saved vocabulary (new
    characters are <unk>); a missing or inconsistent text_encoder.json is a RunDirError naming it."""
    cfg = LanguageModelConfig.model_validate(_lm_config(tmp_path / "data", "char", "abcabcabd\n" * 10))
    task = LanguageModelTask(cfg)
    task.setup()
    task.save_artifacts(tmp_path)
    loaded = LanguageModelTask(cfg)
    loaded.load_artifacts(tmp_path)
    assert loaded.encoder.vocabulary.itos == task.encoder.vocabulary.itos
    assert loaded.build_model().embedding.num_embeddings == task.vocab_size
    # ONNX export inputs come from the vocabulary alone (the graph itself is checked in test_export)
    inputs, outputs = loaded.export_inputs(rows=3)
    tokens = inputs["tokens"]
    assert outputs == ["logits"] and tokens.shape == (3, min(cfg.lm.bptt, 64)) and tokens.dtype == torch.int64
    assert 0 <= int(tokens.min()) and int(tokens.max()) < task.vocab_size
    model = loaded.build_model().eval()
    assert torch.equal(loaded.export_forward(model, tokens), model(tokens)[0])
    (tmp_path / "other.txt").write_text("xyzab", encoding="utf-8")
    loaded.setup(tmp_path / "other.txt", whole=True)
    assert sorted(loaded.ids) == ["test"]
    assert loaded.ids["test"].tolist()[:3] == [loaded.encoder.unk_id] * 3
    assert loaded.encoder.vocabulary.itos == task.encoder.vocabulary.itos
    wrong = LanguageModelConfig.model_validate(_lm_config(tmp_path / "data", "word", "abc\n"))
    with pytest.raises(RunDirError, match="char level, its config says word"):
        LanguageModelTask(wrong).load_artifacts(tmp_path)
    (tmp_path / "text_encoder.json").unlink()
    with pytest.raises(RunDirError, match="text_encoder.json is missing"):
        LanguageModelTask(cfg).load_artifacts(tmp_path)


# ---- learning ---------------------------------------------------------------------------------------------------
@needs_shared
def test_small_lm_beats_unigram_on_tiny_shakespeare(tmp_path):
    """A small char LSTM after one pass over 200k characters (~120 TBPTT windows, a few seconds) has a
    validation perplexity well below the add-one unigram model's (~27 on this slice)."""
    text = (SHARED / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")[:220_000]
    task = _char_task(tmp_path, text, encoder="lstm:64", bptt=50, eval_batch_size=16, embedding_dim=32)
    task.config.train.batch_size = 32
    torch.manual_seed(0)
    model = task.build_model()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    model.train()
    for batch in task.train_batches(0, torch.Generator()):
        loss, _ = task.training_step(model, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        metrics = task.evaluate(model, "val")
    unigram = task.unigram_perplexity("val")
    assert 20 < unigram < 35
    assert metrics["perplexity"] < 0.6 * unigram, (metrics, unigram)
    assert metrics["bpc"] == pytest.approx(math.log2(metrics["perplexity"]), rel=1e-9)
