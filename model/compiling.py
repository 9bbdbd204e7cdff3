"""torch.compile's marks on the model code, applied only once a layer is compiled.

`torch.compiler.disable` and `torch._dynamo.maybe_mark_dynamic` import torch._dynamo, about a second on a CPU,
which every process that builds a model (the driver, each worker) would pay at import or on its first batch
although it compiles nothing. Here a function is only registered at import (`outside_compiled_graphs`) and
disabled by `keep_registered_out_of_graphs`, which `compile_model` calls; `mark_dynamic_tokens` marks a tensor
only once torch._dynamo is loaded (before that, nothing can be compiling). Uncompiled, both change nothing.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

import torch

F = TypeVar("F", bound=Callable[..., Any])

_REGISTERED: list[tuple[dict[str, Any], str]] = []
"""(module globals, function name) of each function that compiled graphs break around."""


def outside_compiled_graphs(fn: F) -> F:
    """Decorator for a module-level function whose shapes change with every batch: compiled layers break
    around it. It stays the plain function until `keep_registered_out_of_graphs` runs."""
    _REGISTERED.append((fn.__globals__, fn.__name__))
    return fn


def keep_registered_out_of_graphs() -> None:
    """Replace each registered function in its module by `torch.compiler.disable` of it (once): its callers
    look it up by name at each call, so compiled layers break around it from now on."""
    while _REGISTERED:
        namespace, name = _REGISTERED.pop()
        namespace[name] = torch.compiler.disable(namespace[name])


def mark_dynamic_tokens(x: torch.Tensor) -> None:
    """Compiled layers: one graph for any token count (dim 0 of an unpadded (T, ...) tensor)."""
    if "torch._dynamo" in sys.modules:
        torch._dynamo.maybe_mark_dynamic(x, 0)
