"""Training behaviour: padding, exact loss normalisation under a split batch, memorisation, checkpointing."""

import pytest
import torch
from torch.testing import assert_close

from model import IGNORE_INDEX, PRESETS, BertConfig, BertForPreTraining
from tests.model.helpers import random_batch, tiny_config


def _gradients(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def test_padding_does_not_change_outputs_at_real_positions():
    config = tiny_config()
    model = BertForPreTraining(config).eval()
    batch = random_batch(config, padded=False, seq_len=12)
    extra = 7  # pad every row with 7 more positions that attention must ignore
    padded = {
        "input_ids": torch.nn.functional.pad(batch["input_ids"], (0, extra), value=config.pad_token_id),
        "token_type_ids": torch.nn.functional.pad(batch["token_type_ids"], (0, extra)),
        "attention_mask": torch.nn.functional.pad(batch["attention_mask"], (0, extra)),
        "mlm_labels": torch.nn.functional.pad(batch["mlm_labels"], (0, extra), value=IGNORE_INDEX),
        "next_sentence_label": batch["next_sentence_label"],
    }
    with torch.no_grad():
        plain_sequence, plain_pooled = model.bert(batch["input_ids"], batch["token_type_ids"])
        padded_sequence, padded_pooled = model.bert(
            padded["input_ids"], padded["token_type_ids"], padded["attention_mask"]
        )
        plain_out, padded_out = model(**batch), model(**padded)
    assert_close(padded_sequence[:, :12], plain_sequence)
    assert_close(padded_pooled, plain_pooled)
    assert_close(padded_out.mlm_logits, plain_out.mlm_logits)
    assert_close(padded_out.loss, plain_out.loss)


def test_split_batch_with_global_normaliser_gives_the_full_batch_loss_and_gradients():
    config = tiny_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = BertForPreTraining(config).train()
    batch = random_batch(config, batch_size=6, seq_len=14, seed=5)

    full = model(**batch)
    full.loss.backward()
    full_gradients = _gradients(model)
    model.zero_grad()

    mlm_total = (batch["mlm_labels"] != IGNORE_INDEX).sum()
    halves = [{k: v[:2] for k, v in batch.items()}, {k: v[2:] for k, v in batch.items()}]  # uneven on purpose
    outputs = [model(**half, mlm_normalizer=mlm_total, nsp_normalizer=6) for half in halves]
    for out in outputs:
        out.loss.backward()  # accumulates, as micro-steps do

    assert_close(sum(out.loss for out in outputs), full.loss)
    assert_close(sum(out.mlm_loss for out in outputs), full.mlm_loss)
    assert_close(sum(out.nsp_loss for out in outputs), full.nsp_loss)
    assert sum(out.mlm_count for out in outputs) == full.mlm_count
    assert sum(out.mlm_correct for out in outputs) == full.mlm_correct
    split_gradients = _gradients(model)
    assert split_gradients.keys() == full_gradients.keys()
    for name, gradient in full_gradients.items():
        assert_close(split_gradients[name], gradient, msg=name)


def test_tiny_model_memorises_a_handful_of_sequences():
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=50,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=16,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    mask_id = 1
    sequences = torch.randint(2, 50, (8, 16))
    labelled = torch.rand(8, 16) < 0.25
    labelled[:, 3] = True
    batch = {
        "input_ids": sequences.masked_fill(labelled, mask_id),
        "mlm_labels": sequences.masked_fill(~labelled, IGNORE_INDEX),
        "next_sentence_label": torch.randint(0, 2, (8,)),
    }
    model = BertForPreTraining(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(300):
        out = model(**batch)
        if out.mlm_accuracy > 0.95 and out.nsp_accuracy == 1:
            break
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    with torch.no_grad():
        final = model.eval()(**batch)
    assert final.mlm_accuracy > 0.9
    assert final.nsp_accuracy > 0.9


def test_activation_checkpointing_gives_the_same_gradients():
    config = tiny_config()  # dropout on: checkpointing must replay the same dropout masks
    batch = random_batch(config, seed=2)
    plain = BertForPreTraining(config).train()
    checkpointed = BertForPreTraining(tiny_config(activation_checkpointing=True)).train()
    checkpointed.load_state_dict(plain.state_dict())
    results = []
    for model in (plain, checkpointed):
        torch.manual_seed(7)
        out = model(**batch)
        out.loss.backward()
        results.append((out.loss.detach(), _gradients(model)))
    (plain_loss, plain_gradients), (checkpointed_loss, checkpointed_gradients) = results
    assert_close(checkpointed_loss, plain_loss)
    for name, gradient in plain_gradients.items():
        assert_close(checkpointed_gradients[name], gradient, msg=name)


def test_vocabulary_padding_is_internal():
    config = tiny_config(vocab_size=99, pad_vocab_multiple=64)
    model = BertForPreTraining(config).train()
    assert config.padded_vocab_size == 128
    out = model(**random_batch(config))
    assert out.mlm_logits.shape[-1] == 99
    out.loss.backward()
    # Padding rows are never looked up or predicted, so they get no gradient and stay zero.
    assert (model.bert.embeddings.word.weight.grad[99:] == 0).all()
    assert (model.mlm_bias.grad[99:] == 0).all()
    assert (model.bert.embeddings.word.weight[99:] == 0).all()


def test_with_nsp_off_every_trainable_parameter_gets_a_gradient():
    config = tiny_config(use_nsp=False)
    model = BertForPreTraining(config).train()
    batch = random_batch(config)
    out = model(**batch)
    assert out.nsp_logits is None and out.nsp_loss == 0
    out.loss.backward()
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert not any(name.startswith(("nsp_head", "bert.pooler")) for name in trainable)
    assert all(model.get_parameter(name).grad is not None for name in trainable)


def test_a_global_batch_without_labelled_tokens_gives_zero_mlm_loss_and_zero_gradients():
    """Masking chose no token in the whole global batch: its normaliser (the labelled-token count, summed
    over every micro-batch and rank) is 0. The MLM loss is 0 and every gradient 0, not NaN (0/0), which the
    optimizer step would write into every weight."""
    config = tiny_config(use_nsp=False)  # the MLM head path alone
    model = BertForPreTraining(config).train()
    batch = random_batch(config)
    batch["mlm_labels"] = torch.full_like(batch["mlm_labels"], IGNORE_INDEX)
    out = model(**batch, mlm_normalizer=torch.tensor(0.0), nsp_normalizer=torch.tensor(4.0))  # as train_step
    assert out.mlm_count == 0 and out.mlm_logits.shape == (0, config.vocab_size)
    assert out.mlm_loss.item() == 0.0 and out.loss.item() == 0.0
    out.loss.backward()
    gradients = _gradients(model)
    assert any(name.startswith("mlm_") for name in gradients) and "bert.embeddings.word.weight" in gradients
    for name, gradient in gradients.items():
        assert torch.isfinite(gradient).all() and (gradient == 0).all(), name


def test_presets_have_the_bert_sizes():
    sizes = {
        name: (p["num_hidden_layers"], p["hidden_size"], p["num_attention_heads"])
        for name, p in PRESETS.items()
    }
    assert sizes == {
        "tiny": (2, 128, 2),
        "mini": (4, 256, 4),
        "small": (4, 512, 8),
        "medium": (8, 512, 8),
        "base": (12, 768, 12),
        "large": (24, 1024, 16),
    }
    base = BertConfig.from_preset("base", vocab_size=1000)
    assert (base.intermediate_size, base.vocab_size, base.max_position_embeddings) == (3072, 1000, 512)
    with pytest.raises(ValueError, match="unknown model preset 'huge'; choose one of tiny, mini"):
        BertConfig.from_preset("huge")


def test_sequence_longer_than_the_position_table_is_refused():
    config = tiny_config(max_position_embeddings=8)
    with pytest.raises(ValueError, match="sequence length 9 exceeds max_position_embeddings 8"):
        BertForPreTraining(config)(torch.ones(1, 9, dtype=torch.long))
