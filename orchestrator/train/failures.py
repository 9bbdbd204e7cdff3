"""Worker failures: one line for each restart, and errors that no restart can cure end the run at once.

Ray Train restarts the workers after any error, up to `FailureConfig(max_failures)` times. A `UserError`
raised in a worker (a damaged checkpoint file, weights that do not fit, a full disk) would fail the same way
each time, so `StopOnUserError` ends the run at the first one, and the driver re-raises it as the one clear
message. Any other failure (a worker or node lost) is said in one line: which worker, why, and where the
run goes on from.
"""

from __future__ import annotations

from typing import Any

from ray.train import ControllerError, TrainingFailedError, WorkerGroupError

from common.console import say
from common.errors import UserError
from common.ray_internals import ControllerCallback, RestartingState
from orchestrator.run_dir import RunDir
from orchestrator.train.checkpoints import find_resume_checkpoint


def user_error_in(error: BaseException | None) -> UserError | None:
    """The UserError a worker (or a callback) raised, inside Ray Train's error; None for any other."""
    if isinstance(error, ControllerError):
        causes = [error.controller_failure]
    elif isinstance(error, WorkerGroupError):
        # Ray wraps each worker's exception with its traceback text; the exception itself is `_base_exc`.
        causes = [getattr(failure, "_base_exc", failure) for failure in error.worker_failures.values()]
    else:
        return None
    return next((cause for cause in causes if isinstance(cause, UserError)), None)


class StopOnUserError(ControllerCallback):
    """Ray Train controller callback: when the controller is about to restart the workers after a worker's
    UserError, raise it instead (a callback's error ends the run: the failure policy does not retry it);
    after any other failure, say on the console what failed and where the run goes on from."""

    def __init__(self, run_dir: RunDir | None = None, max_failures: int = 0):
        self.run_dir = run_dir
        self.max_failures = max_failures
        self.restarts = 0

    def after_controller_state_update(self, previous_state: Any, current_state: Any) -> None:
        if isinstance(current_state, RestartingState):
            error: TrainingFailedError = current_state.training_failed_error
            if (user_error := user_error_in(error)) is not None:
                raise user_error
            self.restarts += 1
            restart = f"restart {self.restarts} of {self.max_failures}"
            say(f"{what_failed(error)}; {self._where_it_goes_on()} ({restart})")

    def _where_it_goes_on(self) -> str:
        resume = find_resume_checkpoint(self.run_dir) if self.run_dir is not None else None
        if resume is None or resume.path is None:
            return "the workers start again from step 0"
        return f"the workers resume from the checkpoint of step {resume.step}"


def what_failed(error: BaseException) -> str:
    """'worker 1 failed (ActorDiedError: ...)', from Ray Train's error: the worker that died when one did,
    else the first failed one."""
    if isinstance(error, WorkerGroupError) and error.worker_failures:
        causes = {rank: getattr(f, "_base_exc", f) for rank, f in error.worker_failures.items()}
        # The worker that died, rather than the others' lost connections to it.
        rank = min(causes, key=lambda r: ("died" not in f"{type(causes[r]).__name__} {causes[r]}".lower(), r))
        cause = causes[rank]
        reason = str(cause).strip().splitlines()[0][:160] if str(cause).strip() else ""
        return f"worker {rank} failed ({type(cause).__name__}{': ' + reason if reason else ''})"
    return f"the worker group failed ({type(error).__name__})"
