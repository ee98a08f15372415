"""The guards of a PPO step, as a mixin of `PPOTrainer`: NaN/inf checks that skip a step, the skipped step's
stats, early stopping on the policy KL, and the settings an out-of-memory error names."""

from __future__ import annotations

import time

import torch
from torch import Tensor

from ..utils.faults import nonfinite_names
from . import _distributed, _ppo_stats
from ._ppo_types import StepInputs


def gradients_finite(parameters: list[Tensor]) -> bool:
    """Whether every gradient of ``parameters`` is finite (parameters without one are skipped).

    One fused pass per (device, dtype) group through torch's own check for the gradient scaler
    (`GradScaler.unscale_`), at scale 1 (the gradients keep their values): about half the time of
    the 2-norm, which PPO needs only to clip (then the clipping's norm is checked instead). Sharded
    gradients are checked shard by shard: the trainer combines the answer over processes.
    """
    groups: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
    for p in parameters:
        if p.grad is not None:
            grad = p.grad.detach()
            grad = grad.to_local() if hasattr(grad, "to_local") else grad  # FSDP2 (DTensor): this process's shard
            groups.setdefault((grad.device, grad.dtype), []).append(grad)
    found = []
    for (device, _), grads in groups.items():
        found_inf = torch.zeros(1, device=device)  # set to 1 by the check on any NaN/inf
        torch._amp_foreach_non_finite_check_and_unscale_(grads, found_inf, torch.ones(1, device=device))
        found.append(found_inf)
    return not any(bool(f.item()) for f in found)


class PPOGuardsMixin:
    """Needs ``self.accelerator``, ``self.config``, ``self.optimizer``, ``self.nonfinite``, ``self.kl_ctl`` and
    ``self.current_step`` (set by `PPOTrainer`)."""

    def _skip_step(self, what: str, inputs: StepInputs, t_start: float) -> dict:
        """End a step that changed no weight: count it (`NonFiniteError` once too many), report NaN stats.

        The KL controller and the scheduler do not advance.
        """
        self.nonfinite.bad_step(what, self.current_step)
        self._drop_gradients()
        gather = lambda seqs: _distributed.gather_rows(_ppo_stats.lengths(seqs), self.accelerator)
        stats = _ppo_stats.skipped_step_stats(
            _ppo_stats.scalar_stats(self.config.uses_critic), gather(inputs.queries), gather(inputs.responses),
            self.kl_ctl.value, self.optimizer.param_groups[0]["lr"],
        )
        stats.update(self.nonfinite.stats(skipped=True))
        stats["time/ppo/total"] = time.time() - t_start
        self.current_step += 1
        return stats

    def _drop_gradients(self) -> None:
        self.optimizer.zero_grad()
        self._sync_now, self._window_updates = True, 0

    def _memory_advice(self, inputs: StepInputs) -> list[str]:
        cfg = self.config
        longest = max(q.numel() + r.numel() for q, r in zip(inputs.queries, inputs.responses))
        return [
            (
                f"PPOConfig.mini_batch_size (now {cfg.mini_batch_size}: samples per forward and backward chunk), "
                f"raising gradient_accumulation_steps (now {cfg.gradient_accumulation_steps}) to keep their product"
            ),
            f"the sample length (longest query + response now {longest} tokens: lower max_new_tokens or truncate queries)",
            f"PPOConfig.batch_size (now {cfg.batch_size})",
            "or enable gradient checkpointing (the language model's gradient_checkpointing_enable())",
        ]

    def _nonfinite_scores(self, scores: Tensor) -> str | None:
        """Where the scores are NaN/inf (on any process), or None."""
        bad = torch.nonzero(~torch.isfinite(scores)).flatten().tolist()
        if not _distributed.any_over_processes(bool(bad), self.accelerator):
            return None
        return f"the scores (positions {bad} on process {self.accelerator.process_index})" if bad else "the scores of another process"

    def _nonfinite_rollout(self, logprobs: Tensor, ref_logprobs: Tensor, values: Tensor, kls: Tensor) -> str | None:
        """Which rollout tensors hold NaN/inf (on any process), or None."""
        bad = nonfinite_names({"log-probs": logprobs, "reference log-probs": ref_logprobs, "values": values, "per-token KL": kls})
        if not _distributed.any_over_processes(bool(bad), self.accelerator):
            return None
        return f"the rollout ({', '.join(bad)} on process {self.accelerator.process_index})" if bad else "the rollout of another process"

    def _early_stop(self, policykl: Tensor) -> bool:
        """True once the policy KL of a minibatch exceeds 1.5 x target_kl (on any process)."""
        stop = _distributed.any_over_processes(float(policykl) > 1.5 * self.config.target_kl, self.accelerator)
        if stop:
            self.optimizer.zero_grad()
        return stop
