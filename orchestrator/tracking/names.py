"""How training runs read in MLflow: the experiment marked as model training, metric names in sections.

MLflow 3.17's UI groups a run's charts into sections by the part of a metric's name before the last "/", and
sorts the sections (then the charts in each) alphabetically. The training loop names its metrics by section
(`train/`, `eval/`, `optim/`, `perf/`, `data/`, in Ray Train's reports and checkpoints); in MLflow each
section carries its place in front (`1-train/loss`, `2-eval/perplexity`, `3-optim/learning_rate`,
`4-perf/tokens_per_s`, `5-data/epoch`), so that the run page opens on the training loss, then the held-out
numbers. Names outside these sections (and the system metrics, `system/...`) are logged as they are.

Runs recorded by earlier versions used flat names (`loss`, `eval_mlm_loss` ...), then the bare sections
(`train/loss` ...). When such a run resumes, each old metric's history is copied under its current name, so
that every chart is whole, and the run goes on under the current names; the old metrics stay as they were.
"""

from __future__ import annotations

# MLflow 3's UI opens an experiment in the view its kind tag names; without one it guesses (GenAI, for ours).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"
# MLflow 3.17's UI takes the view from this query parameter of its address instead (else from the browser's
# last choice, GenAI at first): links to it carry the parameter.
MODEL_TRAINING_VIEW = "workflowType=machine_learning"
# Where `bert-pretrain ui` serves the UI by default.
UI_HOST, UI_PORT = "127.0.0.1", 5000

# The sections of the training loop's metric names, in the order the run page shows them.
SECTION_ORDER = ("train", "eval", "optim", "perf", "data")


def mlflow_metric_key(name: str) -> str:
    """The MLflow name of a reported metric: its section numbered by SECTION_ORDER (`train/loss` ->
    `1-train/loss`); other names as they are."""
    section, slash, rest = name.partition("/")
    if not slash or section not in SECTION_ORDER:
        return name
    return f"{SECTION_ORDER.index(section) + 1}-{section}/{rest}"


# The flat names of runs logged before the sections -> the training loop's names.
FLAT_METRICS = {
    "loss": "train/loss",
    "mlm_loss": "train/mlm_loss",
    "nsp_loss": "train/nsp_loss",
    "mlm_accuracy": "train/mlm_accuracy",
    "nsp_accuracy": "train/nsp_accuracy",
    "learning_rate": "optim/learning_rate",
    "grad_norm": "optim/grad_norm",
    "param_norm": "optim/param_norm",
    "tokens_per_s": "perf/tokens_per_s",
    "samples_per_s": "perf/samples_per_s",
    "step_time_s": "perf/step_time_s",
    "consumed_samples": "data/consumed_samples",
    "epoch": "data/epoch",
    "eval_mlm_loss": "eval/mlm_loss",
    "eval_perplexity": "eval/perplexity",
    "eval_mlm_accuracy": "eval/mlm_accuracy",
    "eval_nsp_accuracy": "eval/nsp_accuracy",
}


def current_name(key: str) -> str | None:
    """The name a metric logged by an earlier version has now (None: the name is current)."""
    renamed = mlflow_metric_key(FLAT_METRICS.get(key, key))
    return renamed if renamed != key else None


def mark_model_training(client, experiment_id: str) -> None:
    """Tag the experiment as model training, so that the MLflow UI opens it in that view. A kind someone set
    is kept; one the UI inferred is replaced."""
    kind = client.get_experiment(experiment_id).tags.get(EXPERIMENT_KIND_TAG, "")
    if not kind or kind.endswith("_inferred") or kind == "no_inferred_type":
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)


def carry_over_renamed_metrics(client, run) -> dict[str, int]:
    """The last logged step of each metric of `run`, after copying each old-named metric's history under
    its current name (the steps missing there), so that a resumed run logs no step of the current names
    twice."""
    from mlflow.entities import Metric
    from mlflow.utils.validation import MAX_METRICS_PER_BATCH

    steps = {metric.key: metric.step for metric in run.data.to_proto().metrics}
    renamed = {old: new for old in sorted(steps) if (new := current_name(old))}
    for old, new in renamed.items():
        history = client.get_metric_history(run.info.run_id, new) if new in steps else []
        logged = {metric.step for metric in history}
        missing = [
            Metric(new, metric.value, metric.timestamp, metric.step)
            for metric in client.get_metric_history(run.info.run_id, old)
            if metric.step not in logged
        ]
        for start in range(0, len(missing), MAX_METRICS_PER_BATCH):
            batch = missing[start : start + MAX_METRICS_PER_BATCH]
            client.log_batch(run.info.run_id, metrics=batch, synchronous=True)
        steps[new] = max(steps.get(new, -1), steps[old])
    return steps
