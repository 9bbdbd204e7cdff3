"""The job config: every recipe loads strictly; bad keys, types and values are refused, clearly."""

from __future__ import annotations

import pytest
import yaml

from common.errors import UserError
from orchestrator.cli import main
from orchestrator.config import (
    RECIPES_DIR,
    JobConfig,
    config_from_dict,
    flag_overrides,
    load_config,
)
from orchestrator.run_dir import checkpoint_name

RECIPES = sorted(path.stem for path in RECIPES_DIR.glob("*.yaml"))


def test_the_five_recipes_exist():
    assert {"debug", "mini", "base-phase1", "base-phase2", "large"} <= set(RECIPES)


@pytest.mark.parametrize("name", RECIPES)
def test_every_recipe_loads_validates_and_round_trips(name):
    config = load_config(name)
    assert isinstance(config, JobConfig)
    assert config.checkpoint.run_name
    assert config_from_dict(config.to_dict()) == config  # the resolved config loads back as it was


def test_recipes_follow_the_published_batch_and_learning_rate():
    phase1, phase2, large = load_config("base-phase1"), load_config("base-phase2"), load_config("large")
    assert (phase1.train.global_batch_size, phase1.optim.lr, phase1.optim.warmup_steps) == (256, 1e-4, 10000)
    assert (phase1.data.prepare.max_seq_length, phase2.data.prepare.max_seq_length) == (128, 512)
    assert phase1.data.tokenizer_dir == phase2.data.tokenizer_dir  # phase 2 continues phase 1's vocabulary
    assert (large.optim.name, large.train.global_batch_size, large.optim.lr, large.train.max_steps) == (
        "lamb",
        65536,
        6e-3,
        7038,
    )


def test_the_modernbert_recipes_follow_the_published_phases():
    main, decay, context = (load_config(f"modernbert-{phase}") for phase in ("main", "decay", "context"))
    for phase in (main, decay, context):
        assert (phase.model.family, phase.model.use_nsp, phase.model.dropout) == ("modernbert", False, 0.0)
        assert (phase.data.prepare.objective, phase.masking.mlm_probability) == ("mlm", 0.3)
    assert (main.model.preset, main.model.global_rope_theta) == ("mini", 10_000.0)
    assert (main.train.batch_size_warmup.start, main.train.global_batch_size) == (32, 128)
    # Main and context hold their peak; the decay phase goes on from the main phase's last checkpoint, its
    # weights and StableAdamW's moments, down to 0 in a 1-sqrt shape, on the main phase's examples.
    for phase in (main, decay, context):
        assert (phase.optim.name, phase.optim.schedule) == ("stableadamw", "wsd")
    assert main.optim.decay_steps == context.optim.decay_steps == 0
    decay_optim = decay.optim
    assert (decay_optim.warmup_steps, decay_optim.decay_fraction, decay_optim.decay_shape) == (
        0,
        1.0,
        "1-sqrt",
    )
    assert decay.checkpoint.init_from == f"runs/modernbert-main/{checkpoint_name(main.train.max_steps)}"
    assert decay.checkpoint.init_optimizer_state and decay.data.prepared_dir == main.data.prepared_dir
    assert context.checkpoint.init_from == "runs/modernbert-main/final"
    assert (context.model.global_rope_theta, context.model.max_position_embeddings) == (160_000.0, 512)
    assert context.data.prepare.max_seq_length > main.data.prepare.max_seq_length


MODERNBERT = ["model.family=modernbert", "model.use_nsp=false", "data.prepare.objective=mlm"]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            ["model.family=modernbert"],
            "model.use_nsp is true but modernbert has no next-sentence head (MLM "
            "only): set model.use_nsp: false and data.prepare.objective: mlm",
        ),
        (
            MODERNBERT[:2],
            "data.prepare.objective is 'mlm+nsp' but model.family modernbert has no "
            "next-sentence head: set data.prepare.objective: mlm",
        ),
        (
            [*MODERNBERT, "model.preset=small"],
            "model.preset: 'small' is not one of tiny, mini, base, large, auto (the modernbert presets)",
        ),
        (["model.global_rope_theta=160000"], "model.global_rope_theta is set but bert has no such setting"),
        ([*MODERNBERT, "model.max_position_embeddings=0"], "model.max_position_embeddings must be positive"),
    ],
)
def test_bad_model_family_settings_are_refused_with_the_fix(overrides, expected):
    with pytest.raises(UserError) as refused:
        load_config("debug", overrides)
    assert expected in str(refused.value)


def test_overrides_use_dotted_keys_and_yaml_values():
    config = load_config("debug", ["optim.lr=2e-4", "scaling.use_gpu=true", "data.prepare.max_seq_length=32"])
    assert config.optim.lr == 2e-4
    assert config.scaling.use_gpu is True
    assert config.data.prepare.max_seq_length == 32


def test_a_recipe_path_works_as_well_as_a_name(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({"train": {"max_steps": 3}}))
    assert load_config(str(path)).train.max_steps == 3


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("optim.lrr=1", "unknown key 'lrr' in section 'optim'; valid keys: name, lr,"),
        ("optimizer.lr=1", "unknown key 'optimizer' in the top level; valid keys: model, data, masking,"),
        ("optim.lr=fast", "optim.lr: expected float, got str 'fast'"),
        ("train.max_steps=1.5", "train.max_steps: expected int, got float 1.5"),
        ("optim.name=sgd", "optim.name: 'sgd' is not one of 'adamw', 'lamb'"),
        ("model.preset=huge", "model.preset: 'huge' is not one of tiny, mini, small, medium, base, large"),
        ("train.max_tokens=1000", "set exactly one of max_steps and max_tokens"),
        ("train.max_steps=0", "train.max_steps must be positive, got 0"),
        ("scaling.num_workers=0", "scaling.num_workers must be positive"),
        ("scaling.min_workers=3", "scaling.min_workers must be between 1 and scaling.num_workers=2, got 3"),
        ("masking.mlm_probability=1.5", "mlm_probability is 1.5"),
        ("data.prepare.objective=mlm", "set model.use_nsp: false"),
        ("data.tokenizer.vocab_size=big", "data.tokenizer.vocab_size: expected int"),
        ("train.batch_size_warmup.start=8", "train.batch_size_warmup: set both start and tokens"),
        ("train.batch_size_warmup.tokens=-1", "train.batch_size_warmup.tokens must be >= 0, got -1"),
        ("lr", "must look like section.key=value"),
        ("data.corpus=[a, b", "--set data.corpus=[a, b: the value is not valid YAML"),
    ],
)
def test_bad_settings_are_refused_naming_the_key_and_choices(override, expected):
    with pytest.raises(UserError) as error:
        load_config("debug", [override])
    assert expected in str(error.value)


def test_a_batch_warmup_starts_at_a_size_that_divides_the_global_batch():
    warmup = ["train.batch_size_warmup.start=8", "train.batch_size_warmup.tokens=100000"]
    assert load_config("debug", warmup).train.batch_size_warmup.enabled
    assert not load_config("debug").train.batch_size_warmup.enabled  # off by default
    for start in (12, 32):
        with pytest.raises(UserError) as error:
            load_config("debug", [f"train.batch_size_warmup.start={start}", warmup[1]])
        assert (
            f"train.batch_size_warmup.start must divide global_batch_size=32 and be smaller, got {start}; "
            "starts that do: 1, 2, 4, 8, 16"
        ) in str(error.value)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["optim.schedule=wsd"], "optim: schedule wsd needs exactly one of decay_steps and decay_fraction"),
        (
            ["optim.schedule=wsd", "optim.decay_steps=10", "optim.decay_fraction=0.1"],
            "needs exactly one of decay_steps and decay_fraction",
        ),
        (["optim.decay_steps=10"], "optim.decay_steps is for the wsd schedule only"),
        (["optim.schedule=wsd", "optim.decay_steps=-1"], "optim.decay_steps must be >= 0, got -1"),
        (["optim.schedule=wsd", "optim.decay_fraction=1.5"], "optim.decay_fraction must be in (0, 1], got"),
        (
            ["optim.schedule=wsd", "optim.decay_shape=cosine"],
            "optim.decay_shape: 'cosine' is not one of 'linear', '1-sqrt'",
        ),
        (["optim.min_lr_ratio=2"], "optim.min_lr_ratio must be in [0, 1], got 2"),
        (
            ["optim.schedule=wsd", "optim.decay_steps=61", "train.max_steps=60", "optim.warmup_steps=0"],
            "optim.warmup_steps (0) + the wsd decay (61 steps) exceed the run's 60 steps",
        ),
        (
            ["optim.schedule=wsd", "optim.decay_fraction=0.9", "train.max_steps=60", "optim.warmup_steps=10"],
            "optim.warmup_steps (10) + the wsd decay (54 steps) exceed the run's 60 steps",
        ),
        (["checkpoint.init_optimizer_state=true"], "init_optimizer_state needs checkpoint.init_from"),
    ],
)
def test_bad_schedule_and_optimizer_settings_are_refused_naming_the_key(overrides, expected):
    with pytest.raises(UserError) as error:
        load_config("debug", overrides)
    assert expected in str(error.value)


def test_config_show_prints_the_optimizer_and_schedule_keys(capsys):
    overrides = ["optim.name=stableadamw", "optim.schedule=wsd", "optim.decay_fraction=0.2"]
    assert main(["config", "show", "debug", *(f"--set={o}" for o in overrides)]) == 0
    optim = yaml.safe_load(capsys.readouterr().out)["optim"]
    assert optim["name"] == "stableadamw" and optim["schedule"] == "wsd"
    assert (optim["decay_steps"], optim["decay_fraction"]) == (None, 0.2)
    assert (optim["decay_shape"], optim["min_lr_ratio"]) == ("linear", 0.0)


def test_num_workers_takes_a_count_or_an_elastic_range(capsys):
    fixed = load_config("debug", ["scaling.min_workers=2", *flag_overrides(4, None)])
    assert (fixed.scaling.min_workers, fixed.scaling.num_workers, fixed.scaling.elastic) == (None, 4, False)
    elastic = load_config("debug", flag_overrides((2, 8), True))
    assert (elastic.scaling.fewest_workers, elastic.scaling.num_workers, elastic.scaling.use_gpu) == (
        2,
        8,
        True,
    )
    assert elastic.scaling.describe_workers() == "2-8"
    with pytest.raises(UserError, match="scaling.min_workers must be between 1 and scaling.num_workers=2"):
        load_config("debug", flag_overrides((8, 2), None))
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--config", "debug", "--num-workers", "two"])
    assert exit_.value.code == 2
    assert "expected N or MIN-MAX (e.g. 4 or 2-8), got 'two'" in capsys.readouterr().err


def test_unknown_recipe_lists_the_recipes():
    with pytest.raises(UserError, match="not found") as error:
        load_config("nope")
    assert "debug" in str(error.value)


def test_config_show_prints_the_resolved_config_and_the_cli_reports_errors(capsys):
    assert main(["config", "show", "debug", "--set", "optim.lr=3e-4"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["optim"]["lr"] == 3e-4 and shown["mlflow"]["enabled"] is True
    assert main(["config", "show", "debug", "--set", "optim.bogus=1"]) == 2
    assert "unknown key 'bogus' in section 'optim'" in capsys.readouterr().err


def test_a_bad_override_is_blamed_on_the_command_line_not_the_recipe(capsys):
    assert main(["config", "show", "debug", "--set", "train.max_stepz=3"]) == 2
    error = capsys.readouterr().err
    assert "error: --set train.max_stepz=3: unknown key 'max_stepz' in section 'train'" in error
    assert "debug.yaml" not in error
    assert main(["config", "show", "debug", "--set", "train.max_tokens=1000"]) == 2  # valid alone, not with
    assert "debug.yaml --set train.max_tokens=1000: train: set exactly one of" in capsys.readouterr().err


def test_a_rejected_secret_is_not_echoed():
    with pytest.raises(UserError) as error:
        load_config("debug", ["data.prepare.hf_token=[hf_planted"])
    assert "--set data.prepare.hf_token=***: the value is not valid YAML" in str(error.value)
    assert "hf_planted" not in str(error.value)


def test_config_show_keeps_credentials_out(capsys):
    overrides = [
        "mlflow.tracking_uri=http://alice:planted-pw@mlflow:5000",
        "data.corpus=['s3://b/c?secret_key=sk9']",
    ]
    assert main(["config", "show", "debug", *(arg for o in overrides for arg in ("--set", o))]) == 0
    shown = capsys.readouterr().out
    assert "planted-pw" not in shown and "sk9" not in shown
    config = yaml.safe_load(shown)
    assert config["mlflow"]["tracking_uri"] == "http://alice:***@mlflow:5000"
    assert config["data"]["corpus"] == ["s3://b/c?secret_key=***"]
