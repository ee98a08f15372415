"""KL coefficient controllers for PPO (TRL's AdaptiveKLController / FixedKLController)."""

from __future__ import annotations

from ..functional.ppo import adaptive_kl_coef


class AdaptiveKLController:
    """Adapts beta so the observed KL tracks ``target`` over about ``horizon`` samples (Ziegler et al. 2019)."""

    def __init__(self, init_kl_coef: float, target: float, horizon: float):
        if target is None or target <= 0:
            raise ValueError(f"adaptive KL control needs a positive target KL, got {target!r}")
        if horizon is None or horizon <= 0:
            raise ValueError(f"adaptive KL control needs a positive horizon, got {horizon!r}")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current: float, n_steps: int) -> None:
        self.value = adaptive_kl_coef(self.value, float(current), self.target, n_steps, self.horizon)

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


class FixedKLController:
    """A constant KL coefficient."""

    def __init__(self, kl_coef: float):
        self.value = float(kl_coef)

    def update(self, current: float, n_steps: int) -> None:
        pass

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])
