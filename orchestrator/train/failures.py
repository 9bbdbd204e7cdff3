"""Worker errors that no restart can cure end the run at once, with their own message.

Ray Train restarts the workers after any error, up to `FailureConfig(max_failures)` times. A `UserError`
raised in a worker (a damaged checkpoint file, weights that do not fit) would fail the same way each time, so
`StopOnUserError` ends the run at the first one, and the driver re-raises it as the one clear message.
"""

from __future__ import annotations

from typing import Any

from ray.train import ControllerError, TrainingFailedError, WorkerGroupError

from common.errors import UserError
from common.ray_internals import ControllerCallback, RestartingState


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
    UserError, raise it instead; a callback's error ends the run (the failure policy does not retry it)."""

    def after_controller_state_update(self, previous_state: Any, current_state: Any) -> None:
        if isinstance(current_state, RestartingState):
            error: TrainingFailedError = current_state.training_failed_error
            if (user_error := user_error_in(error)) is not None:
                raise user_error
