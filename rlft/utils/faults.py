"""Fault handling shared by the trainers: the non-finite-step policy and out-of-memory messages.

Non-finite values: a NaN or inf in the scores, the rollout (log-probs, values, KL),
a loss or a gradient is caught before it reaches the weights. By default the step
is skipped, counted and warned about; after ``max_consecutive`` non-finite steps in
a row training stops with `NonFiniteError`, which names the last good checkpoint.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional, Sequence

import torch


class NonFiniteError(RuntimeError):
    """Training met NaN/inf values it could not skip (or was told not to skip).

    ``checkpoint`` is the last checkpoint saved before the run of non-finite steps
    began (None when none was saved): resume from it.
    """

    def __init__(self, message: str, checkpoint: Optional[Path] = None):
        super().__init__(message)
        self.checkpoint = checkpoint


class NonFiniteGuard:
    """Counts non-finite steps and decides between skipping and stopping.

    Args:
        skip: skip non-finite steps (True) or raise at the first one (False).
        max_consecutive: raise once this many steps in a row were non-finite.
    """

    def __init__(self, skip: bool = True, max_consecutive: int = 5):
        if not isinstance(max_consecutive, int) or isinstance(max_consecutive, bool) or max_consecutive < 1:
            raise ValueError(f"max_consecutive must be a positive integer, got {max_consecutive!r}.")
        self.skip = skip
        self.max_consecutive = max_consecutive
        self.total = 0
        self.consecutive = 0
        #: Last checkpoint saved while the run was healthy (set by the trainer after each save).
        self.last_good_checkpoint: Optional[Path] = None

    def good_step(self) -> None:
        """A step finished with finite values: the streak ends."""
        self.consecutive = 0

    def bad_step(self, what: str, step: int) -> None:
        """Record a non-finite step; warn (skip) or raise `NonFiniteError`.

        ``what`` says where the values were found, e.g. "scores at positions [2]".
        """
        self.total += 1
        self.consecutive += 1
        where = f"step {step}: non-finite values (NaN or inf) in {what}"
        checkpoint = self.last_good_checkpoint
        resume = (
            f" The last good checkpoint is {checkpoint}; resume from it (load_checkpoint) after fixing the cause."
            if checkpoint is not None
            else " No checkpoint was saved before this; save checkpoints regularly (save_checkpoint) to resume from."
        )
        if not self.skip:
            raise NonFiniteError(
                f"{where}. The step was stopped before any weight changed (skip_nonfinite_steps=False)." + resume,
                checkpoint,
            )
        if self.consecutive >= self.max_consecutive:
            raise NonFiniteError(
                f"{where}: {self.consecutive} non-finite steps in a row (max_consecutive_nonfinite_steps="
                f"{self.max_consecutive}), so training stops. Usual causes: a reward function returning NaN/inf, "
                "a learning rate high enough to make the weights diverge, fp16 overflow." + resume,
                checkpoint,
            )
        warnings.warn(
            f"{where}; the step is skipped (no weight update). {self.consecutive} in a row, "
            f"{self.total} in all; training stops at {self.max_consecutive} in a row.",
            UserWarning,
            stacklevel=3,
        )

    def stats(self, skipped: bool, prefix: str = "ppo/nonfinite") -> dict[str, float]:
        """The counters as stats: this step skipped (0/1), streak length, total so far."""
        return {
            f"{prefix}/skipped": float(skipped),
            f"{prefix}/consecutive": float(self.consecutive),
            f"{prefix}/total": float(self.total),
        }

    def state_dict(self) -> dict:
        return {
            "total": self.total,
            "consecutive": self.consecutive,
            "last_good_checkpoint": str(self.last_good_checkpoint) if self.last_good_checkpoint else None,
        }

    def load_state_dict(self, state: dict) -> None:
        self.total = int(state["total"])
        self.consecutive = int(state["consecutive"])
        last = state.get("last_good_checkpoint")
        self.last_good_checkpoint = Path(last) if last else None


def nonfinite_names(named: dict[str, Optional[torch.Tensor]], mask: Optional[torch.Tensor] = None) -> list[str]:
    """Names of the tensors in ``named`` holding a NaN or inf (where ``mask`` is non-zero, when given)."""
    bad = []
    for name, value in named.items():
        if value is None:
            continue
        value = value.detach()
        finite = torch.isfinite(value)
        if mask is not None and mask.shape == value.shape:
            finite = finite | (mask == 0)
        if not bool(finite.all()):
            bad.append(name)
    return bad


#: Gradient dtypes whose norms are accumulated in float32: their squares overflow (fp16) or lose digits.
_LOW_PRECISION = (torch.float16, torch.bfloat16)


def grad_norm(parameters: Sequence[torch.Tensor]) -> torch.Tensor:
    """Total 2-norm of the gradients of ``parameters`` (NaN or inf when any gradient is), float32.

    Equals ``torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in parameters]))``,
    computed as one ``torch._foreach_norm`` per (device, dtype) group and a norm of those norms,
    rather than a kernel launched from Python per parameter. fp16/bf16 gradients are
    accumulated in float32; the result is on the device of the first gradient (0 without any).
    """
    grads = [p.grad.detach() for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(())
    groups: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    for g in grads:
        groups.setdefault((g.device, g.dtype), []).append(g)
    device = grads[0].device
    norms = []
    for (_, dtype), group in groups.items():
        accumulate = torch.float32 if dtype in _LOW_PRECISION else None
        norms.extend(n.to(device, torch.float32) for n in torch._foreach_norm(group, 2, dtype=accumulate))
    return torch.linalg.vector_norm(torch.stack(norms))  # NaN/inf in any group norm carries through


# ---------------------------------------------------------------------- out of memory
def is_out_of_memory(err: BaseException) -> bool:
    """True for accelerator and host out-of-memory errors (torch raises several types)."""
    oom_type = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(err, oom_type):
        return True
    text = str(err).lower()
    return isinstance(err, (RuntimeError, MemoryError)) and (
        "out of memory" in text or "can't allocate memory" in text or "not enough memory" in text
        or isinstance(err, MemoryError)
    )


def out_of_memory_error(err: BaseException, where: str, advice: Sequence[str]) -> BaseException:
    """A copy of ``err`` (same type when possible) whose message says which settings to lower.

    ``where`` names the operation ("PPOTrainer.step"), ``advice`` lists the settings,
    most effective first, each with its current value.
    """
    message = (
        f"Out of memory in {where}. Lower, in this order: " + "; ".join(advice)
        + f". (Original error: {str(err).strip()[:500]})"
    )
    try:
        new = type(err)(message)
    except Exception:  # an exception type with an unusual constructor
        new = RuntimeError(message)
    return new
