"""ModernBERT through the whole tool: `--init-from` a ModernBertForMaskedLM that transformers saved (random
weights, a byte-level BPE tokenizer with its special tokens after the vocabulary, as ModernBERT's), trained on
Ray Train with MLM at 30%, checkpointed, resumed exactly, recorded in MLflow, exported as a folder that
transformers loads with the same logits; `--init-from` our own ModernBERT checkpoint, with a new global rotary
theta (context extension); and fill-mask, embed and eval on the transformers folder against transformers.

Two Ray Train fits in all (`modernbert_run`): the run, then its resume from a middle checkpoint."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
import torch
import transformers
from mlflow import MlflowClient
from safetensors.torch import load_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from common.errors import UserError
from data.tokenizer import TOKENIZER_FILES
from model import ModernBertForPreTraining
from model.modernbert_heads import ModernBertForSequenceClassification
from orchestrator.config import config_from_dict
from orchestrator.inference.embed import CorpusEmbedder, EmbedSettings
from orchestrator.inference.evaluate import evaluate
from orchestrator.inference.loading import load_model
from orchestrator.inference.predict import fill_mask
from orchestrator.run_dir import RunDir
from orchestrator.train.checkpoints import init_weights_from, load_model_from_checkpoint
from orchestrator.train.driver import train
from orchestrator.train.init_from import adopt_donor, model_config, read_donor
from tests.orchestrator.conftest import VOCAB, write_corpus

SPECIALS = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]  # ModernBERT's, after its BPE vocabulary
SHAPE = {"num_hidden_layers": 3, "hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 96}
STEPS, CHECKPOINT_EVERY = 4, 2
TEXTS = ["The cat sees the ball in the morning.", "A dog likes the river.", "My friend helps the old man."]


def save_modernbert_donor(directory: Path, corpus: Path, seed: int = 0) -> Path:
    """A random transformers ModernBertForMaskedLM (global attention every 2 layers, a window of 16) and a
    byte-level BPE tokenizer trained on `corpus`, saved by transformers."""
    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        min_frequency=1,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train([str(corpus)], trainer)
    tokenizer.add_special_tokens(SPECIALS)
    ids = {token: tokenizer.token_to_id(token) for token in SPECIALS}
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])],
    )
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        mask_token="[MASK]",
    )
    fast.save_pretrained(directory)
    config = transformers.ModernBertConfig(
        vocab_size=tokenizer.get_vocab_size(),
        pad_token_id=ids["[PAD]"],
        cls_token_id=ids["[CLS]"],
        sep_token_id=ids["[SEP]"],
        bos_token_id=ids["[CLS]"],
        eos_token_id=ids["[SEP]"],
        max_position_embeddings=128,
        global_attn_every_n_layers=2,
        local_attention=16,
        **SHAPE,
    )
    torch.manual_seed(seed)
    transformers.ModernBertForMaskedLM(config).save_pretrained(directory)
    return directory


def modernbert_job(root: Path, donor: str, **sections: dict):
    """MLM at 30% from the donor's weights and tokenizer, 4 steps on 1 worker, a checkpoint every 2 steps,
    an evaluation at the start (init-from) and the end, recorded in a SQLite MLflow store."""
    raw = {
        "model": {"family": "modernbert", "preset": "auto", "use_nsp": False, "dropout": 0.0},
        "data": {
            "corpus": [str(root / "corpus.txt")],
            "tokenizer_dir": "",
            "prepared_dir": str(root / "prepared"),
            "prepare": {
                "objective": "mlm",
                "documents": "blank-line",
                "max_seq_length": 48,
                "eval_fraction": 0.15,
            },
        },
        "masking": {"mlm_probability": 0.3},
        "train": {
            "global_batch_size": 8,
            "micro_batch_size": 8,
            "max_steps": STEPS,
            "log_every": 1,
            "eval_every": STEPS,
        },
        "optim": {"lr": 2e-3, "warmup_steps": 1},
        "scaling": {"num_workers": 1, "cpus_per_worker": 0.5, "data_cpus": 1},
        "checkpoint": {
            "storage_path": str(root / "runs"),
            "run_name": "modernbert",
            "every": CHECKPOINT_EVERY,
            "init_from": donor,
        },
        "mlflow": {"enabled": True, "tracking_uri": f"sqlite:///{root / 'mlflow.db'}"},
    }
    for section, values in sections.items():
        raw[section] = {**raw[section], **values}
    return config_from_dict(raw)


@pytest.fixture(scope="module")
def donor_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("modernbert")
    corpus = write_corpus(root / "corpus.txt", documents=48, seed=7)
    return save_modernbert_donor(root / "donor", corpus)


@pytest.fixture(scope="module")
def modernbert_run(donor_dir, ray_session) -> dict:
    """The run from the transformers folder; then its newest checkpoint and final/ are removed and the same
    run is started again, which resumes from the middle checkpoint and trains the last steps again."""
    root = donor_dir.parent
    job = modernbert_job(root, str(donor_dir))
    result = train(job)
    run_dir = RunDir.at(result.run_dir)
    first = {
        "final": load_file(Path(result.final_dir) / "model.safetensors"),
        "run_json": run_dir.read_run_json(),
    }
    shutil.rmtree(run_dir.checkpoint(STEPS))
    shutil.rmtree(run_dir.final)
    resumed = train(job)
    return {"job": job, "root": root, "result": resumed, "first": first, "run_dir": run_dir}


def test_the_export_loads_in_transformers_with_the_checkpoints_logits(modernbert_run):
    final = Path(modernbert_run["result"].final_dir)
    exported, info = transformers.AutoModelForMaskedLM.from_pretrained(final, output_loading_info=True)
    assert type(exported) is transformers.ModernBertForMaskedLM
    assert (set(info["missing_keys"]), set(info["unexpected_keys"])) == (set(), set())
    assert {name: getattr(exported.config, name) for name in SHAPE} == SHAPE

    tokenizer = transformers.AutoTokenizer.from_pretrained(final)
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    ours = load_model_from_checkpoint(Path(modernbert_run["run_dir"].checkpoint(STEPS))).eval()
    real = batch["attention_mask"].bool()
    labels = batch["input_ids"].masked_fill(~real, -100)  # our head runs on the labelled positions
    with torch.no_grad():
        theirs = exported.eval()(**batch).logits[real]  # (real tokens, V)
        logits = ours(
            batch["input_ids"], attention_mask=batch["attention_mask"], mlm_labels=labels
        ).mlm_logits
    torch.testing.assert_close(logits, theirs, rtol=1e-5, atol=1e-5)


def test_a_resume_trains_exactly_what_the_run_trained(modernbert_run):
    resumed = load_file(Path(modernbert_run["result"].final_dir) / "model.safetensors")
    first = modernbert_run["first"]["final"]
    assert resumed.keys() == first.keys()
    for name, tensor in first.items():
        assert torch.equal(resumed[name], tensor), name
    assert modernbert_run["result"].steps == STEPS
    run_json = modernbert_run["run_dir"].read_run_json()
    assert run_json["mlflow_run_id"] == modernbert_run["first"]["run_json"]["mlflow_run_id"]  # one run


def test_init_from_a_transformers_folder_starts_from_its_weights_and_tokenizer(modernbert_run, donor_dir):
    job, root = modernbert_run["job"], modernbert_run["root"]
    run_json = modernbert_run["run_dir"].read_run_json()
    assert run_json["config"]["data"]["tokenizer_dir"] == str(donor_dir)
    final = Path(modernbert_run["result"].final_dir)
    assert (final / "tokenizer.json").read_text() == (donor_dir / "tokenizer.json").read_text()

    # The run scored its starting model at step 0; `eval` of the transformers folder with the run's masks
    # gives the same number only if the run started from the donor's weights.
    client = MlflowClient(job.mlflow.tracking_uri)
    history = {
        m.step: m.value for m in client.get_metric_history(run_json["mlflow_run_id"], "2-eval/mlm_loss")
    }
    assert sorted(history) == [0, STEPS]
    donor_score = evaluate(
        load_model(donor_dir), str(root / "prepared"), seed=job.train.seed, masking=job.masking
    )
    assert history[0] == pytest.approx(donor_score.mlm_loss, rel=1e-5)
    assert history[STEPS] < history[0]
    tags = client.get_run(run_json["mlflow_run_id"]).data.tags
    assert (tags["init_from"], tags["init_from_missing_heads"]) == (str(donor_dir), "none")


def test_init_from_our_checkpoint_with_a_new_global_theta_is_context_extension(modernbert_run, tmp_path):
    checkpoint = modernbert_run["run_dir"].checkpoint(CHECKPOINT_EVERY)
    donor = read_donor(checkpoint)
    assert donor.family.name == "modernbert"
    root, donor_config = modernbert_run["root"], donor.config
    job = modernbert_job(
        root, checkpoint, model={"global_rope_theta": 320_000.0, "max_position_embeddings": 512}
    )
    job = adopt_donor(job, donor)
    config = model_config(job, donor_config.vocab_size, {"pad": donor_config.pad_token_id}, donor)
    assert (config.global_rope_theta, config.max_position_embeddings) == (320_000.0, 512)
    assert (config.local_rope_theta, config.local_attention) == (donor_config.local_rope_theta, 16)
    model = ModernBertForPreTraining(config)
    init_weights_from(model, checkpoint)
    saved = load_model_from_checkpoint(Path(checkpoint)).state_dict()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, saved[name]), name

    with pytest.raises(
        UserError, match=r"model.preset=tiny \(num_hidden_layers 4, .* contradicts --init-from"
    ):
        adopt_donor(modernbert_job(root, checkpoint, model={"preset": "tiny"}), donor)
    bert_job = config_from_dict({"checkpoint": {"init_from": checkpoint}})
    with pytest.raises(UserError, match="is a modernbert model but model.family is bert: set model.family: "):
        adopt_donor(bert_job, donor)
    other = tmp_path / "wordpiece"
    other.mkdir()
    (other / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    with pytest.raises(UserError, match="is not the tokenizer of --init-from"):
        adopt_donor(modernbert_job(root, checkpoint, data={"tokenizer_dir": str(other)}), donor)


def test_fill_mask_and_embed_on_a_transformers_folder_match_transformers(donor_dir):
    loaded = load_model(donor_dir)
    assert type(loaded.model) is ModernBertForPreTraining
    ours = fill_mask(loaded, "The cat sees[MASK] ball in the morning.", top_k=5)[0]
    pipeline = transformers.pipeline("fill-mask", model=str(donor_dir), device="cpu", top_k=5)
    theirs = pipeline("The cat sees[MASK] ball in the morning.")
    assert [p.token_id for p in ours] == [p["token"] for p in theirs]
    assert [p.probability for p in ours] == pytest.approx([p["score"] for p in theirs], rel=1e-4)

    hf = transformers.ModernBertModel.from_pretrained(donor_dir).eval()
    batch = transformers.AutoTokenizer.from_pretrained(donor_dir)(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        states = hf(**batch).last_hidden_state  # (N, S, H)
    weights = batch["attention_mask"][..., None].float()
    expected = {"cls": states[:, 0], "mean": (states * weights).sum(1) / weights.sum(1)}
    for pooling, vectors in expected.items():
        embedder = CorpusEmbedder(str(donor_dir), None, EmbedSettings(pooling=pooling))
        embedded, num_tokens, _ = embedder.embed(TEXTS)
        assert num_tokens.tolist() == batch["attention_mask"].sum(1).tolist()
        torch.testing.assert_close(torch.from_numpy(embedded), vectors, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_the_classifier_exports_what_transformers_pipeline_predicts(donor_dir, tmp_path, pooling):
    loaded = load_model(donor_dir)
    config = dataclasses.replace(loaded.model.config, classifier_pooling=pooling)
    torch.manual_seed(0)
    classifier = ModernBertForSequenceClassification(config, num_labels=3).eval()
    classifier.bert.load_state_dict(loaded.model.bert.state_dict())
    labels = ["animal", "person", "thing"]
    classifier.save_hf(tmp_path, labels)
    for name in TOKENIZER_FILES:
        if (donor_dir / name).is_file():
            shutil.copy(donor_dir / name, tmp_path / name)

    hf, info = transformers.ModernBertForSequenceClassification.from_pretrained(
        tmp_path, output_loading_info=True
    )
    assert (set(info["missing_keys"]), set(info["unexpected_keys"])) == (set(), set())
    batch = transformers.AutoTokenizer.from_pretrained(tmp_path)(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        ours = classifier(batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        theirs = hf.eval()(**batch).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    pipeline = transformers.pipeline("text-classification", model=str(tmp_path), device="cpu", top_k=None)
    predicted = pipeline([TEXTS[0]])[0]  # (label, score) of every class
    expected = ours[0].softmax(-1)
    assert {p["label"]: p["score"] for p in predicted} == pytest.approx(
        {label: float(expected[i]) for i, label in enumerate(labels)}, rel=1e-4
    )
