"""Given the same weights, our model gives the outputs of `transformers.BertForPreTraining` (fp32, eval)."""

import pytest
import torch
import transformers
from torch.testing import assert_close

from model import IGNORE_INDEX, BertForPreTraining
from tests.model.helpers import hf_reference, random_batch, tiny_config

CASES = {
    "padded, token types, NSP": dict(config={}, batch=dict(padded=True, token_types=True)),
    "no padding, no token types": dict(config={}, batch=dict(padded=False, token_types=False)),
    "one head, no vocab padding": dict(
        config=dict(num_attention_heads=1, pad_vocab_multiple=1, vocab_size=128), batch=dict(seq_len=9)
    ),
    "three layers, 3 token types, odd sizes": dict(
        config=dict(
            num_hidden_layers=3,
            hidden_size=24,
            num_attention_heads=3,
            intermediate_size=40,
            type_vocab_size=3,
            vocab_size=77,
        ),
        batch=dict(batch_size=3, seq_len=13),
    ),
    "MLM only (NSP off)": dict(config=dict(use_nsp=False), batch=dict(padded=True)),
}


@pytest.fixture(params=list(CASES), ids=list(CASES))
def case(request, tmp_path):
    spec = CASES[request.param]
    config = tiny_config(**spec["config"])
    reference = hf_reference(config, seed=len(request.param))
    reference.save_pretrained(tmp_path)
    ours = BertForPreTraining.from_hf(tmp_path, use_nsp=config.use_nsp).eval()
    batch = random_batch(config, seed=len(request.param), **spec["batch"])
    return config, ours, reference, batch


def test_encoder_outputs_match(case):
    config, ours, reference, batch = case
    inputs = {k: batch[k] for k in ("input_ids", "token_type_ids", "attention_mask") if k in batch}
    with torch.no_grad():
        sequence_output, pooled_output = ours.bert(**inputs)
        expected = reference.bert(**inputs)
    real = batch["attention_mask"].bool()  # padding positions hold zeros in ours, anything in HF's
    assert_close(sequence_output[real], expected.last_hidden_state[real])
    assert_close(pooled_output, expected.pooler_output)


def test_heads_and_loss_match(case):
    config, ours, reference, batch = case
    inputs = {k: batch[k] for k in ("input_ids", "token_type_ids", "attention_mask") if k in batch}
    with torch.no_grad():
        out = ours(**batch)
        labels = {"labels": batch["mlm_labels"], "next_sentence_label": batch["next_sentence_label"]}
        expected = reference(**inputs, **labels)

    labelled = batch["mlm_labels"] != IGNORE_INDEX
    assert out.mlm_logits.shape == (int(labelled.sum()), config.vocab_size)
    assert_close(out.mlm_logits, expected.prediction_logits[labelled])
    reference_mlm_loss = torch.nn.functional.cross_entropy(
        expected.prediction_logits.flatten(0, 1), batch["mlm_labels"].flatten()
    )
    assert_close(out.mlm_loss, reference_mlm_loss)
    assert out.mlm_count == labelled.sum()
    if config.use_nsp:
        assert_close(out.nsp_logits, expected.seq_relationship_logits)
        assert_close(out.loss, expected.loss)
    else:
        assert out.nsp_logits is None
        assert out.nsp_loss == 0 and out.nsp_count == 0
        assert_close(out.loss, reference_mlm_loss)


def test_counts_and_accuracies_match_the_logits(case):
    config, ours, _, batch = case
    with torch.no_grad():
        out = ours(**batch)
    labels = batch["mlm_labels"][batch["mlm_labels"] != IGNORE_INDEX]
    assert out.mlm_correct == (out.mlm_logits.argmax(-1) == labels).sum()
    assert_close(out.mlm_accuracy, (out.mlm_logits.argmax(-1) == labels).float().mean())
    if config.use_nsp:
        nsp_correct = (out.nsp_logits.argmax(-1) == batch["next_sentence_label"]).sum()
        assert out.nsp_correct == nsp_correct and out.nsp_count == len(batch["next_sentence_label"])
        assert_close(out.nsp_accuracy, nsp_correct / len(batch["next_sentence_label"]))


def test_masked_lm_checkpoint_gives_same_mlm_logits(tmp_path):
    config = tiny_config()
    reference = hf_reference(config, cls=transformers.BertForMaskedLM, seed=3)
    reference.save_pretrained(tmp_path)
    with pytest.warns(UserWarning, match="seq_relationship"):
        ours = BertForPreTraining.from_hf(tmp_path).eval()
    batch = random_batch(config, seed=3)
    with torch.no_grad():
        out = ours(**batch)
        expected = reference(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    assert_close(out.mlm_logits, expected.logits[batch["mlm_labels"] != IGNORE_INDEX])
