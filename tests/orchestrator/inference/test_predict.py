"""fill-mask, nsp and `embed --text`: equal to transformers' pipeline on a random HF model, right on a
memorised one, and clear errors on bad input. No Ray: these commands run in one process."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import transformers

from common.errors import UserError
from data import load_tokenizer
from data.tokenizer import MASK, SPECIAL_TOKENS, save_tokenizer
from model import IGNORE_INDEX, BertConfig, BertForPreTraining
from orchestrator.cli import main
from orchestrator.inference.loading import load_model
from orchestrator.inference.predict import fill_mask, next_sentence_probability, token_representations
from orchestrator.train.checkpoints import Trainables, TrainState, save_checkpoint
from tests.orchestrator.conftest import copy_tokenizer_files

# Four memorised pairs: a sentence A and the sentence B that follows it.
PAIRS = [
    ("the cat sees the moon.", "the moon is bright tonight."),
    ("a dog likes the river.", "the river runs to the sea."),
    ("my friend paints a house.", "the house has a red door."),
    ("the teacher calls the bird.", "the bird sings in a tree."),
]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> str:
    """A whole-word vocabulary of PAIRS. Not trained: `tokenizers`' WordPiece trainer numbers tied tokens in
    hash order, so a trained vocabulary (and the model memorised on it) would differ from run to run."""
    root = tmp_path_factory.mktemp("inference_tokenizer")
    words = sorted({word for pair in PAIRS for sentence in pair for word in sentence[:-1].split()})
    (root / "vocab.txt").write_text("\n".join([*SPECIAL_TOKENS, ".", *words]) + "\n")
    save_tokenizer(load_tokenizer(str(root / "vocab.txt")), str(root / "tokenizer"), lowercase=True)
    return str(root / "tokenizer")


@pytest.fixture(scope="module")
def hf_masked_lm_dir(tmp_path_factory, tokenizer_dir):
    """A random tiny transformers BertForMaskedLM (no NSP head) saved with its tokenizer."""
    directory = tmp_path_factory.mktemp("hf_masked_lm")
    vocab_size = transformers.BertTokenizerFast.from_pretrained(tokenizer_dir).vocab_size
    config = transformers.BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=48,
        max_position_embeddings=64,
        initializer_range=0.3,  # far from uniform, so the ranking is meaningful
    )
    torch.manual_seed(0)
    transformers.BertForMaskedLM(config).save_pretrained(directory)
    copy_tokenizer_files(tokenizer_dir, directory)
    return directory


@pytest.mark.parametrize("text", ["the cat sees [MASK] moon.", "[MASK] dog likes the [MASK]."])
def test_fill_mask_equals_transformers_pipeline(hf_masked_lm_dir, text):
    fill = transformers.pipeline("fill-mask", model=str(hf_masked_lm_dir), tokenizer=str(hf_masked_lm_dir))
    expected = fill(text, top_k=5)
    if text.count(MASK) == 1:
        expected = [expected]
    with pytest.warns(UserWarning, match="cls.seq_relationship"):
        loaded = load_model(hf_masked_lm_dir)
    ours = fill_mask(loaded, text, top_k=5)
    assert len(ours) == text.count(MASK)
    for our_mask, their_mask in zip(ours, expected, strict=True):
        assert [p.token_id for p in our_mask] == [p["token"] for p in their_mask]
        torch.testing.assert_close(
            torch.tensor([p.probability for p in our_mask]), torch.tensor([p["score"] for p in their_mask])
        )


def test_model_without_nsp_head_is_a_clear_error(hf_masked_lm_dir, capsys):
    with pytest.warns(UserWarning):
        status = main(["nsp", str(hf_masked_lm_dir), "the cat sees the moon.", "the moon is bright."])
    assert status == 2
    assert "has no trained next-sentence head" in capsys.readouterr().err


def make_batch(tokenizer, pairs: list[tuple[str, str | None]], mask_probability: float, generator):
    """Padded MLM batch of `[CLS] A [SEP] (B [SEP])`: non-special tokens -> [MASK] with the given chance."""
    encodings = [tokenizer.encode(a, b) for a, b in pairs]
    width = max(len(e.ids) for e in encodings)
    ids = torch.zeros(len(pairs), width, dtype=torch.long)
    types = torch.zeros_like(ids)
    special = torch.zeros_like(ids, dtype=torch.bool)
    for row, encoding in enumerate(encodings):
        n = len(encoding.ids)
        ids[row, :n] = torch.tensor(encoding.ids)
        types[row, :n] = torch.tensor(encoding.type_ids)
        special[row, :n] = torch.tensor(encoding.special_tokens_mask).bool()
    attention = (torch.arange(width)[None, :] < torch.tensor([len(e.ids) for e in encodings])[:, None]).long()
    chosen = (torch.rand(ids.shape, generator=generator) < mask_probability) & ~special & attention.bool()
    labels = torch.where(chosen, ids, IGNORE_INDEX)
    masked = torch.where(chosen, tokenizer.token_to_id(MASK), ids)
    return {"input_ids": masked, "token_type_ids": types, "attention_mask": attention, "mlm_labels": labels}


@pytest.fixture(scope="module")
def memorised(tmp_path_factory, tokenizer_dir):
    """A tiny model trained for seconds on PAIRS; saved as a final/ folder and as a training checkpoint."""
    tokenizer = load_tokenizer(tokenizer_dir)
    config = BertConfig(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same result on any machine, and no thread contention on a busy one
    try:
        model, optimizer, scheduler = train_to_memorise(tokenizer, config, steps=200)
    finally:
        torch.set_num_threads(threads)
    root = tmp_path_factory.mktemp("memorised")
    final_dir = root / "final"
    model.save_hf(final_dir)
    copy_tokenizer_files(tokenizer_dir, final_dir)
    checkpoint_dir = root / "checkpoint_000000200"
    job_config = {"data": {"tokenizer_dir": tokenizer_dir}}
    save_checkpoint(
        checkpoint_dir, Trainables(model, optimizer, scheduler), TrainState(step=200), [], job_config
    )
    return {"model": model, "final": final_dir, "checkpoint": checkpoint_dir}


def train_to_memorise(tokenizer, config: BertConfig, steps: int):
    """MLM on the sentences alone and MLM + NSP on every (A, B) combination, AdamW with a linear decay."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    model = BertForPreTraining(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / steps)
    # Every (A, B) combination: the 4 true pairs three times (label 0) and the 12 random ones (label 1).
    combos = [(a, b, 0) for a, b in PAIRS] * 3
    combos += [(a, b2, 1) for i, (a, _) in enumerate(PAIRS) for j, (_, b2) in enumerate(PAIRS) if i != j]
    nsp_labels = torch.tensor([label for _, _, label in combos])
    singles = [(a, None) for a, _ in PAIRS] + [(b, None) for _, b in PAIRS]
    for _ in range(steps):
        pairs_batch = make_batch(tokenizer, [(a, b) for a, b, _ in combos], 0.15, generator)
        single_batch = make_batch(tokenizer, singles, 0.3, generator)
        loss = model(**pairs_batch, next_sentence_label=nsp_labels).loss + model(**single_batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
    return model.eval(), optimizer, scheduler


@pytest.mark.parametrize("folder", ["final", "checkpoint"])
def test_memorised_model_fills_the_word_and_separates_pairs(memorised, folder):
    loaded = load_model(memorised[folder])
    (top,) = fill_mask(loaded, "a dog likes the [MASK].", top_k=3)
    assert top[0].token == "river"
    assert top[0].probability > 0.5
    (first, second) = fill_mask(loaded, "the [MASK] sees the [MASK].")
    assert (first[0].token, second[0].token) == ("cat", "moon")

    for i, (a, _) in enumerate(PAIRS):
        for j, (_, b) in enumerate(PAIRS):
            probability = next_sentence_probability(loaded, a, b)
            assert (probability > 0.5) == (i == j), (a, b, probability)


def test_final_folder_of_an_mlm_only_run_has_no_nsp(memorised, tmp_path):
    final = tmp_path / "final"
    shutil.copytree(memorised["final"], final)  # the tokenizer files
    BertForPreTraining.from_hf(final, use_nsp=False).save_hf(final)  # config.json now says use_nsp: false
    loaded = load_model(final)
    assert not loaded.has_nsp_head
    with pytest.raises(UserError, match="trained without NSP"):
        next_sentence_probability(loaded, "a dog likes the river.", "the river runs to the sea.")


def test_token_representations_are_the_encoder_output(memorised, capsys):
    loaded = load_model(memorised["final"])
    tokens, vectors = token_representations(loaded, "the cat sees the moon.")
    assert tokens == ["[CLS]", "the", "cat", "sees", "the", "moon", ".", "[SEP]"]
    ids = torch.tensor([[loaded.tokenizer.token_to_id(t) for t in tokens]])
    expected, _ = memorised["model"].bert(ids)
    torch.testing.assert_close(vectors, expected[0])

    assert main(["embed", str(memorised["final"]), "--text", "the cat sees the moon.", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["shape"] == [8, 64]
    assert [row["token"] for row in shown["tokens"]] == tokens
    torch.testing.assert_close(torch.tensor([row["norm"] for row in shown["tokens"]]), vectors.norm(dim=-1))


def test_fill_mask_command_prints_the_predictions(memorised, capsys):
    assert (
        main(["fill-mask", str(memorised["final"]), "a dog likes the [MASK].", "--top-k", "2", "--json"]) == 0
    )
    (predictions,) = json.loads(capsys.readouterr().out)
    assert len(predictions) == 2
    assert predictions[0]["token"] == "river"
    assert main(["nsp", str(memorised["final"]), *PAIRS[0], "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["is_next_probability"] > 0.5


def test_text_without_mask_is_a_clear_error(memorised, capsys):
    assert main(["fill-mask", str(memorised["final"]), "a dog likes the river."]) == 2
    assert "no [MASK] in 'a dog likes the river.'" in capsys.readouterr().err


def test_folder_that_is_not_bert_is_a_clear_error(tmp_path, capsys):
    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 2}))
    assert main(["fill-mask", str(gpt2), "a [MASK]."]) == 2
    assert "model_type 'gpt2' is not a family this tool has ('bert', 'modernbert')" in capsys.readouterr().err

    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["nsp", str(empty), "a.", "b."]) == 2
    assert f"{empty} is not a model folder" in capsys.readouterr().err


def test_nsp_of_empty_sentences_is_refused(memorised, capsys):
    assert main(["nsp", str(memorised["final"]), "", " "]) == 2
    assert "nsp needs two sentences: FIRST and SECOND must not be empty" in capsys.readouterr().err
