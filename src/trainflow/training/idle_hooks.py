"""Per-batch callback hooks that do nothing are kept out of Lightning's dispatch.

Lightning calls every hook of every callback at every batch, whether the
callback implements it or not: six hooks a training step (batch start and
end, before and after backward, before zero_grad and the optimizer step).
Each call of an inherited no-op still costs its dispatch, ~10 Python calls
(the callback's state key, the profiler's context, three property lookups):
with the default callbacks, ~35 no-op calls a step, ~300 of the ~3,400
function calls of a digits step (`bench/framework_tax.py --calls`).

Lightning's dispatcher (`trainer/call.py: _call_callback_hooks`) skips a hook
attribute that is not callable, so a hook a callback does not implement is
set to None on that instance: the dispatch then costs one `getattr` and one
`callable`. Only per-batch hooks are hidden (per-epoch ones cost nothing
worth it), and only on the instance: the class, and every other instance of
it, is unchanged. A callback may also name hooks it implements but does not
need in its configuration (`idle_batch_hooks()`, e.g. ModelCheckpoint's
batch-end hook when it saves by epoch only).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from lightning.pytorch import Callback

BATCH_HOOKS = (
    "on_train_batch_start", "on_train_batch_end",
    "on_before_backward", "on_after_backward", "on_before_zero_grad", "on_before_optimizer_step",
    "on_validation_batch_start", "on_validation_batch_end",
    "on_test_batch_start", "on_test_batch_end",
    "on_predict_batch_start", "on_predict_batch_end",
)


def idle_batch_hooks(callback: Any) -> list[str]:
    """The per-batch hooks `callback` inherits from Callback unchanged, plus those it says it does not need."""
    idle = [name for name in BATCH_HOOKS if getattr(type(callback), name, None) is getattr(Callback, name)]
    declared = getattr(callback, "idle_batch_hooks", None)
    if callable(declared):
        idle += [name for name in declared() if name in BATCH_HOOKS and name not in idle]
    return idle


def hide_idle_batch_hooks(callbacks: Iterable[Any]) -> None:
    """Set each callback's idle per-batch hooks to None, so Lightning does not dispatch them."""
    for callback in callbacks:
        if not isinstance(callback, Callback):
            continue
        for name in idle_batch_hooks(callback):
            setattr(callback, name, None)
