"""The benchmark workloads: one fixed definition each, shared by rlft's and TRL's implementations.

Standard library only. Both implementations of a workload read these numbers, so the two
sides can only differ in how the library executes the same work.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from workloads import critic_free as _cf  # the grpo / rloo workloads' settings


@dataclass(frozen=True)
class Workload:
    name: str
    description: str
    peer: str  # the TRL environment it is compared with: "trl-latest" or "trl-0.11.4"
    batch_size: int
    warmup: int  # untimed steps first (lazy init, allocator, thread pools)
    steps: int  # timed steps per run
    model_kind: str = "causal"  # "causal" or "seqcls"
    max_length: int = 256
    training: bool = True  # counts towards the MFU target
    #: Model FLOPs per parameter per batch token (6 = forward + backward, 8 = that plus a reference
    #: forward), or None: counted forward by forward (generation, PPO rollouts) by the worker's hook.
    flops_per_param_token: int | None = 6
    models: int = 1  # fixture models the implementation takes (loaded before memory is measured)
    model: str = "fixture"  # "fixture" (the tiny --arch model) or "smollm2" (the real asset)
    #: Trainer workloads' data: "short" (the fixtures' texts and pairs) or "long" (the second shape:
    #: pre-tokenised pairs of a 16-64 token prompt and 24-160 token answers, `fixtures._long_pairs`).
    data: str = "short"
    #: Trainer workloads: False pins gradient checkpointing off on both sides (same arithmetic);
    #: True leaves it at each library's documented default (rlft: TRL 0.7.10's, TRL: its own).
    #: Precision stays fp32 on CPU either way (TRL's configs would default to bf16 autocast).
    documented_defaults: bool = False
    arch: str | None = None  # a fixture architecture this workload always uses (None: compare.py's --arch)
    #: Reward workloads on a model with dropout (``gpt2-tiny``): True switches it off on both sides (rlft's
    #: opt-in ``RewardConfig(disable_dropout=True)``). False keeps it on both sides (TRL 0.7.10's behaviour;
    #: the TRL side sets ``disable_dropout=False``), except with documented_defaults, where each library
    #: does as documented: rlft keeps it, the latest TRL switches it off.
    disable_dropout: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


LEARNING_RATE = 1e-5
# PPO (the TRL 0.7 step() loop)
PPO_PROMPTS = 16
PPO_NEW_TOKENS = 32
PPO_MINI_BATCH = 4
PPO_EPOCHS = 4
PPO_SHARED_LAYERS = 2
LORA_R = 16
#: LoRA on every matmul of the blocks (not the LM head), per fixture architecture.
LORA_TARGETS = {
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}
# The real-asset demo step: `rlft demo`'s PPO settings (rlft/demo/config.py) on SmolLM2-135M-Instruct.
DEMO_BATCH = 32
DEMO_MINI_BATCH = 8
DEMO_EPOCHS = 2
DEMO_NEW_TOKENS = 24
DEMO_LEARNING_RATE = 3e-4
# best-of-n
BON_QUERIES = 16
BON_SAMPLE_SIZE = 4
BON_NEW_TOKENS = 32
# DPO
DPO_BETA = 0.1
DPO_MAX_LENGTH = 192
DPO_MAX_PROMPT_LENGTH = 64



def ppo_generation_kwargs(eos_id: int, new_tokens: int = PPO_NEW_TOKENS) -> dict:
    """Pure sampling of exactly ``new_tokens`` tokens (EOS suppressed until then)."""
    return dict(do_sample=True, top_k=0, top_p=1.0, max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=eos_id)


def ppo_settings(name: str, arch: str = "gpt2") -> dict:
    """PPO hyperparameters of a PPO workload: batch, mini_batch, epochs, new_tokens, learning_rate,
    num_shared_layers, lora (None, or the LoRA rank, alpha and target modules)."""
    base = dict(batch=PPO_PROMPTS, mini_batch=PPO_MINI_BATCH, epochs=PPO_EPOCHS, new_tokens=PPO_NEW_TOKENS,
                learning_rate=LEARNING_RATE, num_shared_layers=None, lora=None)
    if name == "ppo_shared_ref":
        base["num_shared_layers"] = PPO_SHARED_LAYERS
    elif name == "ppo_peft_ref":
        # GPT-2's blocks are Conv1D layers (weights stored transposed): peft needs fan_in_fan_out for them.
        base["lora"] = dict(r=LORA_R, alpha=2 * LORA_R, targets=LORA_TARGETS[arch], fan_in_fan_out=arch == "gpt2")
    elif name == "demo_ppo":
        base.update(batch=DEMO_BATCH, mini_batch=DEMO_MINI_BATCH, epochs=DEMO_EPOCHS, new_tokens=DEMO_NEW_TOKENS,
                    learning_rate=DEMO_LEARNING_RATE, lora=dict(r=16, alpha=32, targets="all-linear", fan_in_fan_out=False))
    return base



def ppo_model_kwargs(settings: dict) -> dict:
    """``from_pretrained`` keyword arguments of a PPO workload's value-head model (`ppo_settings`): its
    ``peft_config`` (a peft ``LoraConfig``) when the policy is LoRA, else none. The same on both sides."""
    lora = settings["lora"]
    if lora is None:
        return {}
    from peft import LoraConfig

    return {"peft_config": LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], target_modules=lora["targets"],
                                      lora_dropout=0.0, fan_in_fan_out=lora["fan_in_fan_out"], task_type="CAUSAL_LM")}

def bon_generation_kwargs(eos_id: int) -> dict:
    return dict(do_sample=True, top_k=0, top_p=1.0, min_new_tokens=BON_NEW_TOKENS, pad_token_id=eos_id)


def ppo_score(response_ids: list[int]) -> float:
    """Toy PPO reward shared by both sides: the share of even token ids in the response."""
    return sum(t % 2 == 0 for t in response_ids) / max(len(response_ids), 1)


def bon_scores(texts: list[str]) -> list[float]:
    """Toy best-of-n scorer shared by both sides: the share of vowels in each text."""
    return [sum(c in "aeiou" for c in t) / max(len(t), 1) for t in texts]


LONG_SHAPE = "second data shape: pre-tokenised 16-64 token prompt + 24-160 token answers (uniform), no EOS"
DEFAULTS = "documented defaults (gradient checkpointing as each library documents; fp32 on CPU)"


def base_name(name: str) -> str:
    """The runner a workload uses: ``reward_long_defaults`` -> ``reward``, ``reward_tiny_long_nodropout`` -> ``reward``."""
    for suffix in ("_nodropout", "_defaults", "_long"):
        if name.endswith(suffix) and any(name.startswith(b) for b in _TRAINER_BASES):
            name = name[: -len(suffix)]
    return "reward" if name == "reward_tiny" else name


_TRAINER_BASES = ("sft_padded", "sft_packed", "reward", "reward_tiny", "dpo")


def _trainer_rows(base: Workload) -> tuple[Workload, ...]:
    """A Trainer workload, the same at the documented defaults, and on the second data shape (both settings):
    ``<name>``, ``<name>_defaults``, ``<name>_long``, ``<name>_long_defaults``."""
    from dataclasses import replace

    # the long shape's sequences reach 64 + 160 tokens: every workload gets the 256-token limit there
    long = replace(base, name=f"{base.name}_long", description=f"{base.description}; {LONG_SHAPE}", data="long", max_length=256)
    return tuple(
        replace(w, name=f"{w.name}{suffix}", description=f"{w.description}{note}", documented_defaults=on)
        for w in (base, long)
        for suffix, note, on in (("", "", False), ("_defaults", f"; {DEFAULTS}", True))
    )


def _tiny_reward_rows(base: Workload) -> tuple[Workload, ...]:
    """The issue-22 reward workload (tiny GPT-2 with dropout, the second data shape): dropout kept on both
    sides, then at the documented defaults (rlft keeps dropout, the latest TRL switches it off), then
    with dropout off on both sides (rlft's opt-in), without and with the other documented defaults."""
    from dataclasses import replace

    _, _, long, long_defaults = _trainer_rows(base)
    off = "; dropout off on both sides (rlft: RewardConfig(disable_dropout=True))"
    return (
        long, long_defaults,
        replace(long, name=f"{long.name}_nodropout", description=long.description + off, disable_dropout=True),
        replace(long_defaults, name=f"{long_defaults.name}_nodropout", description=long_defaults.description + off,
                disable_dropout=True),
    )


WORKLOADS = {
    w.name: w
    for w in (
        *_trainer_rows(Workload("sft_padded", "SFT, mixed-length texts padded per batch, 8 x <=256 tokens", "trl-latest", 8, 2, 8)),
        *_trainer_rows(Workload("sft_packed", "SFT, texts packed into 256-token sequences, batch 4", "trl-latest", 4, 2, 8)),
        *_trainer_rows(Workload("reward", "reward model (1-logit head), 8 preference pairs per step", "trl-latest", 8, 2, 10,
                                model_kind="seqcls")),
        # The issue-22 shape: the second data shape on the tiny GPT-2 of rlft.testing.tiny, where a
        # step's fixed costs (collation, per-batch Python, small ops) weigh as much as its matmuls.
        *_tiny_reward_rows(Workload("reward_tiny", "reward model on the tiny GPT-2 (d=64, 2 blocks, dropout 0.1), 8 preference pairs "
                                    "per step", "trl-latest", 8, 3, 30, model_kind="seqcls", arch="gpt2-tiny")),
        *_trainer_rows(Workload("dpo", "DPO sigmoid, frozen reference copy, 8 pairs per step", "trl-latest", 8, 2, 10,
                                max_length=DPO_MAX_LENGTH, flops_per_param_token=8, models=2)),
        Workload(
            "ppo", f"PPO generate + step: {PPO_PROMPTS} prompts, {PPO_NEW_TOKENS} new tokens, mini-batch {PPO_MINI_BATCH}, "
            f"{PPO_EPOCHS} epochs, value head, reference copy", "trl-0.11.4", PPO_PROMPTS, 1, 4, flops_per_param_token=None,
        ),
        Workload(
            "ppo_shared_ref", f"as ppo, reference sharing the first {PPO_SHARED_LAYERS} of 4 blocks (num_shared_layers)",
            "trl-0.11.4", PPO_PROMPTS, 1, 3, flops_per_param_token=None,
        ),
        Workload(
            "ppo_peft_ref", f"as ppo, LoRA policy (r={LORA_R}, attention and MLP), reference = adapter disabled",
            "trl-0.11.4", PPO_PROMPTS, 1, 3, flops_per_param_token=None,
        ),
        Workload(
            "demo_ppo", f"real asset: SmolLM2-135M-Instruct, LoRA (r=16, all linear) PPO generate + step as `rlft demo`: "
            f"{DEMO_BATCH} prompts, {DEMO_NEW_TOKENS} new tokens, mini-batch {DEMO_MINI_BATCH}, {DEMO_EPOCHS} epochs",
            "trl-0.11.4", DEMO_BATCH, 1, 2, flops_per_param_token=None, model="smollm2",
        ),
        Workload(
            "grpo", f"GRPO generate + step: {_cf.GROUP_PROMPTS} prompts x {_cf.GROUP_K} samples x {_cf.GROUP_NEW_TOKENS} new "
            f"tokens, one update, k3 KL in the loss (beta {_cf.GRPO_BETA}), plain LM + reference copy", "trl-latest",
            _cf.GROUP_PROMPTS * _cf.GROUP_K, 1, 4, flops_per_param_token=None,
        ),
        Workload(
            "rloo", f"RLOO generate + step: {_cf.GROUP_PROMPTS} prompts x {_cf.GROUP_K} samples x {_cf.GROUP_NEW_TOKENS} new "
            f"tokens, one update, KL in the reward (beta {_cf.RLOO_BETA}), plain LM + reference copy", "trl-latest",
            _cf.GROUP_PROMPTS * _cf.GROUP_K, 1, 4, flops_per_param_token=None,
        ),
        Workload(
            "best_of_n", f"best-of-n: {BON_QUERIES} queries x {BON_SAMPLE_SIZE} samples x {BON_NEW_TOKENS} new tokens",
            "trl-0.11.4", BON_QUERIES, 1, 4, training=False, flops_per_param_token=None,
        ),
    )
}

#: Model FLOPs per token processed (Kaplan et al. 2020, sec. 2.1): 2N forward, 4N backward.
FORWARD_FLOPS_PER_PARAM = 2
TRAIN_FLOPS_PER_PARAM = 6
