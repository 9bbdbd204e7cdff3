"""`bert-pretrain` subcommands for runs on a Ray cluster: `submit` a run as a Ray job, and `jobs list |
status | logs | stop`. The cluster comes from --address, RAY_API_SERVER_ADDRESS or RAY_ADDRESS, as in Ray's
own CLI."""

from __future__ import annotations

import argparse
import datetime

from common.console import say, warn
from orchestrator.cli.train import add_run_arguments

ADDRESS_HELP = (
    "the head's dashboard, e.g. http://HEAD:8265 (default: $RAY_API_SERVER_ADDRESS, else $RAY_ADDRESS, "
    "else http://127.0.0.1:8265, where `ray dashboard cluster.yaml` forwards it)"
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this module's subcommands."""
    submit = subparsers.add_parser(
        "submit",
        help="submit a training run to a Ray cluster as a Ray job",
        description="Validate the config here, then submit `train` as a Ray job carrying this checkout's "
        "code and the resolved config. The job's submission id is the run name: submitting the same run "
        "again resumes it from its last checkpoint. Prints the job id, the dashboard and the MLflow run; "
        "without --no-wait follows the logs and exits with the job's outcome (0 when it SUCCEEDED).",
    )
    submit.add_argument("--address", help=ADDRESS_HELP)
    add_run_arguments(submit)
    submit.add_argument(
        "--no-wait", action="store_true", help="return once submitted; do not follow the logs"
    )
    submit.set_defaults(func=run_submit)

    jobs = subparsers.add_parser(
        "jobs",
        help="list, watch and stop Ray jobs",
        description="List, watch and stop jobs on a Ray cluster.",
    )
    commands = jobs.add_subparsers(dest="jobs_command", metavar="COMMAND", required=True)
    listing = commands.add_parser("list", help="the cluster's jobs with their status")
    status = commands.add_parser("status", help="a job's status and message")
    logs = commands.add_parser("logs", help="a job's logs")
    stop = commands.add_parser(
        "stop", help="stop a job: the checkpoints stay, the MLflow run ends KILLED; submit it again to resume"
    )
    for parser in (listing, status, logs, stop):
        parser.add_argument("--address", help=ADDRESS_HELP)
    for parser in (status, logs, stop):
        parser.add_argument("job", help="the job's submission id (the run name)")
    logs.add_argument("--follow", "-f", action="store_true", help="keep printing until the job ends")
    listing.set_defaults(func=run_jobs_list)
    status.set_defaults(func=run_jobs_status)
    logs.set_defaults(func=run_jobs_logs)
    stop.set_defaults(func=run_jobs_stop)


def run_submit(args: argparse.Namespace) -> int:
    from common.redact import redact
    from orchestrator.config import flag_overrides, load_config
    from orchestrator.jobs import MlflowRunFinder, check_submittable, connect, follow_logs, submit_run

    flags = flag_overrides(args.num_workers, args.use_gpu, args.init_from)
    config = load_config(args.config, [*args.overrides, *flags])
    for setting in check_submittable(config):
        warn(
            f"{setting} is relative: on the cluster it resolves in the head node's home folder, which the "
            "GPU nodes do not share; use a shared folder or bucket"
        )

    client = connect(args.address)
    job_id = submit_run(client, config)
    from_checkpoint = config.model.preset == "auto" and config.checkpoint.init_from
    model = "the --init-from" if from_checkpoint else config.model.preset
    say(f"Submitted job {job_id}: {config.scaling.describe_workers()} workers, {model} model")
    say(f"Ray dashboard: {redact(client.get_address())}")
    finder = MlflowRunFinder(config)

    def print_link_once_found() -> None:
        if not finder.run_id and finder.find(min_interval_s=5.0):
            say(f"\n[bert-pretrain] MLflow run: {finder.link()}\n")

    if finder.find():
        say(f"MLflow run: {finder.link()}")
    elif config.mlflow.enabled:
        where = finder.tracking_uri or "the cluster's tracking server"
        say(
            f"MLflow: the run appears in experiment {config.mlflow.experiment_name!r} at {redact(where)} "
            "once training starts"
        )
    if args.no_wait:
        say(f"Follow it with: bert-pretrain jobs logs {job_id} --follow")
        return 0
    try:
        final = follow_logs(client, job_id, on_chunk=print_link_once_found)
    except KeyboardInterrupt:
        say(f"\nStopped following; the job keeps running. Stop it with: bert-pretrain jobs stop {job_id}")
        return 130
    print_link_once_found()
    say(f"Job {job_id} {final}")
    return 0 if final == "SUCCEEDED" else 1


def run_jobs_list(args: argparse.Namespace) -> int:
    from orchestrator.jobs import connect

    jobs = sorted(connect(args.address).list_jobs(), key=lambda job: job.start_time or 0)
    rows = [("JOB", "STATUS", "STARTED", "RUN")]
    rows += [
        (
            job.submission_id or job.job_id or "",
            str(job.status.value),
            _time(job.start_time),
            (job.metadata or {}).get("bert_pretrain_run", "-"),
        )
        for job in jobs
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        say("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return 0


def run_jobs_status(args: argparse.Namespace) -> int:
    from orchestrator.jobs import connect, job_status

    client = connect(args.address)
    job_status(client, args.job)  # a clear error for an unknown id
    info = client.get_job_info(args.job)
    say(f"{args.job}: {info.status.value}")
    say(f"started {_time(info.start_time)}, ended {_time(info.end_time)}")
    if info.message:
        say(info.message)
    return 0


def run_jobs_logs(args: argparse.Namespace) -> int:
    from orchestrator.jobs import connect, follow_logs, job_status

    client = connect(args.address)
    if args.follow:
        say(f"Job {args.job} {follow_logs(client, args.job)}")
        return 0
    job_status(client, args.job)
    say(client.get_job_logs(args.job), end="")
    return 0


def run_jobs_stop(args: argparse.Namespace) -> int:
    from orchestrator.jobs import connect, stop_job

    say(f"Job {args.job} {stop_job(connect(args.address), args.job)}")
    say(
        "Its checkpoints stay; resume with: "
        f"bert-pretrain submit --config ... --set checkpoint.run_name={args.job}"
    )
    return 0


def _time(milliseconds: int | None) -> str:
    if not milliseconds:
        return "-"
    return datetime.datetime.fromtimestamp(milliseconds / 1000).strftime("%Y-%m-%d %H:%M:%S")
