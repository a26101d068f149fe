"""The profiler a trainer gets when the config names none: Lightning's pass-through, minus its per-hook cost.

Lightning wraps every hook call in `trainer.profiler.profile(name)`: the
module's, the strategy's and each callback's, ~40 a training step with the
default callbacks. Its default PassThroughProfiler records nothing, yet enters
a generator-based context manager every time, which a small model's step
feels (figures: bench/README.md). This one hands back one shared, reusable `nullcontext`. A
configured profiler (`debug=profiler`, `trainer.profiler=simple`) is used as is.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

from lightning.pytorch.profilers import PassThroughProfiler

_NOTHING: AbstractContextManager[None] = nullcontext()


class NoProfiler(PassThroughProfiler):
    def profile(self, action_name: str) -> AbstractContextManager[None]:  # type: ignore[override]
        return _NOTHING


def profiler_kwargs(trainer_cfg: Any) -> dict[str, Any]:
    """`profiler=` for instantiating the trainer: NoProfiler unless the config names one."""
    return {} if trainer_cfg.get("profiler") else {"profiler": NoProfiler()}
