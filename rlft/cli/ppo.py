"""``rlft ppo``: PPO on prompts from a dataset column, scored by a reward model, VADER or a Python function.

Each step samples ``batch_size`` prompts, generates responses, scores them and runs
`PPOTrainer.step`. Step ``s`` draws its prompts and sampling noise from seeds derived
from ``(seed, s)`` only, so a resumed run continues exactly where a checkpoint left it.
"""

from __future__ import annotations

import random
import time
import warnings
from dataclasses import dataclass
from typing import Literal, Optional

from ._args import CLIError, merged_config
from ._lora import LoraOptions, lora_config
from ._shard import PPOShardingOptions, announce, check_launch, ppo_accelerator_kwargs, requested, world_size, rank as process_rank
from ._run import (
    Finish, Plot, PromptRewardOptions, config_table, model_loading_note, done_line, finish_run, fmt, mean_of, open_run, progress, run_result, trend,
)

DESCRIPTION = "Fine-tune a causal (or seq2seq) language model with PPO against a reward."

#: Mixed into per-step seeds so step s of seed a differs from step 0 of seed a + s.
_STEP_SEED_STRIDE = 1_000_003
#: Mixed into the generation seed of process ``rank`` of a multi-process run (process 0 keeps the step seed).
_RANK_SEED_STRIDE = 7919
#: Metrics shown on the progress bar.
BAR_KEYS = {"reward": "env/reward_mean", "kl": "objective/kl", "loss": "ppo/loss/total"}
PLOTS = [
    Plot("ppo_reward_kl.png", ["env/reward_mean", "objective/kl", "objective/kl_coef"], "PPO: reward and KL per step"),
    Plot("ppo_losses.png", ["ppo/loss/total", "ppo/loss/policy", "ppo/loss/value", "objective/entropy"], "PPO: losses and entropy"),
]

#: Command-line defaults, sized for a first run on a laptop (PPOConfig keeps TRL's documented
#: defaults, steps=20000 and batch_size=256, for the Python API): 100 steps of 16 samples in
#: minibatches of 4, and the two newest checkpoints kept (PPOConfig keeps all).
CLI_DEFAULTS = dict(save_total_limit=2, steps=100, batch_size=16, mini_batch_size=4)
TINY_PRESET = dict(
    model_name_or_path="tiny-gpt2", dataset="tiny", reward="length", steps=4, batch_size=8, mini_batch_size=4,
    ppo_epochs=2, learning_rate=1e-4, max_new_tokens=8, save_steps=2, sample_max_new_tokens=8,
)


@dataclass
class PPOScriptArguments(PromptRewardOptions, LoraOptions, PPOShardingOptions):
    """Where the model, prompts and reward come from, how responses are generated, and where the run goes."""

    output_dir: Optional[str] = None
    """The run directory (default: runs/ppo-<date>-<time>)."""
    model_name_or_path: Optional[str] = None
    """The policy: a local model folder, or tiny-<arch> (tiny-gpt2, ...) for an offline smoke run."""
    temperature: float = 1.0
    """Sampling temperature (1.0 keeps PPO's KL estimate unbiased)."""
    prompt_min_tokens: Optional[int] = None
    """With prompt_max_tokens: cut each prompt to a random length in [min, max] tokens (as TRL's sentiment example)."""
    prompt_max_tokens: Optional[int] = None
    """Cut prompts to at most this many tokens."""
    reward_text: Literal["full", "response"] = "full"
    """What the reward sees: prompt + response ('full') or the response alone."""
    generation_batch_size: int = 16
    """Prompts per generate call."""
    num_shared_layers: Optional[int] = None
    """Share this many initial blocks between policy and reference (frozen in both); default: a full frozen copy."""
    save_steps: int = 50
    """Save a checkpoint (for --resume) every this many steps; 0: only at the end."""
    log_samples: int = 2
    """Generations per step appended to samples/train.jsonl."""


def arguments():
    from ..trainer.ppo_config import PPOConfig

    return (PPOScriptArguments, PPOConfig)


def run(args: PPOScriptArguments, config) -> dict:
    """Run PPO as configured; returns a summary (run_dir, steps, interrupted, exit_code, ...)."""
    import torch

    from ..core import LengthSampler, set_seed
    from ..models import AutoModelForCausalLMWithValueHead, AutoModelForSeq2SeqLMWithValueHead
    from ..reporting import graceful_interrupt
    from ..trainer.ppo_trainer import PPOTrainer
    from . import _load

    _check(args)
    check_launch("ppo", requested(args.fsdp, args.deepspeed))
    # -- inputs: model, tokenizer, prompts, reward
    model_path = _load.model_folder(args.model_name_or_path)
    tokenizer = _load.load_tokenizer(args.tokenizer_name_or_path or model_path)
    prompts = _load.load_prompts(args)
    k = config.num_generations  # samples per prompt (the groups of grpo / dr_grpo / rloo)
    processes, rank = world_size(), process_rank()  # batch_size is per process (PPOConfig)
    if len(prompts) < config.batch_size // k:
        raise CLIError(f"{len(prompts)} prompts but --batch_size {config.batch_size} needs {config.batch_size // k} "
                       f"({k} samples each); lower batch_size or add prompts.")
    queries = _tokenize_prompts(prompts, tokenizer, args, config.seed)
    reward_fn, reward_what = _load.load_text_reward(args.reward, args.reward_batch_size, args.reward_label)
    config.model_name = config.model_name or args.model_name_or_path
    config.query_dataset = config.query_dataset or args.dataset
    config.reward_model = config.reward_model or args.reward

    run_dir = open_run(args.output_dir, args, "ppo", merged_config(args, config))
    enc_dec = _load.is_encoder_decoder(model_path)
    wrapper = AutoModelForSeq2SeqLMWithValueHead if enc_dec else AutoModelForCausalLMWithValueHead
    set_seed(config.seed)  # a new value head is initialised at random: the same one for the same seed
    peft_config = lora_config(args, "SEQ_2_SEQ_LM" if enc_dec else "CAUSAL_LM", model_path)
    model = wrapper.from_pretrained(model_path, **({"peft_config": peft_config} if peft_config is not None else {}))
    # --fsdp / --deepspeed: accelerate's plugins (after config.yaml was written: they are objects, not settings)
    config.accelerator_kwargs = {**config.accelerator_kwargs, **ppo_accelerator_kwargs(args, model)}
    with warnings.catch_warnings():  # one value-head model serves every estimator; critic-free ones leave its head alone
        warnings.filterwarnings("ignore", message=".*needs no critic: the model's value head is not trained", category=UserWarning)
        trainer = PPOTrainer(config, model, None, tokenizer, num_shared_layers=args.num_shared_layers)
    announce("ppo", trainer.accelerator, requested(args.fsdp, args.deepspeed))

    # -- resume, or record the untrained model's samples
    sample_prompts = prompts[: args.num_samples]
    if args.resume:
        _load_checkpoint(trainer, run_dir)
        run_dir.truncate_metrics(trainer.current_step)
    elif sample_prompts:
        run_dir.save_samples("before", _samples(trainer, tokenizer, sample_prompts, reward_fn, args, config.seed))

    # -- the loop: generate, score, step, log; checkpoints every save_steps
    length_sampler = LengthSampler(args.min_new_tokens, args.max_new_tokens + 1) if args.min_new_tokens else None
    gen_kwargs = dict(do_sample=True, top_k=0, top_p=1.0, temperature=args.temperature, pad_token_id=tokenizer.pad_token_id)
    if not length_sampler:
        gen_kwargs["max_new_tokens"] = args.max_new_tokens
    last_saved = trainer.current_step if args.resume else None
    with graceful_interrupt() as stop, progress(config.steps, "ppo", BAR_KEYS, initial=trainer.current_step) as bar:
        while trainer.current_step < config.steps and not stop.stop:
            step_seed = config.seed * _STEP_SEED_STRIDE + trainer.current_step
            picked = _pick_prompts(len(queries), config.batch_size // k, step_seed, rank, processes)
            distinct = [queries[i] for i in picked]
            batch_queries = [q for q in distinct for _ in range(k)]  # query i's k samples are consecutive
            t0 = time.time()
            set_seed(step_seed + rank * _RANK_SEED_STRIDE)  # generation and the minibatch order (torch, numpy, random) of this step
            responses = trainer.generate(
                distinct, return_prompt=False, length_sampler=length_sampler, num_return_sequences=k,
                batch_size=max(1, args.generation_batch_size // k), **gen_kwargs,
            )
            t1 = time.time()
            query_texts = tokenizer.batch_decode(batch_queries, skip_special_tokens=True)
            response_texts = tokenizer.batch_decode(responses, skip_special_tokens=True)
            scored = response_texts if args.reward_text == "response" else [q + r for q, r in zip(query_texts, response_texts)]
            scores = reward_fn(scored)
            t2 = time.time()
            stats = trainer.step(batch_queries, responses, [torch.tensor(s) for s in scores])
            logs = trainer.log_stats(stats, {"query": query_texts, "response": response_texts}, scores)
            tokens = sum(len(q) + len(r) for q, r in zip(batch_queries, responses))
            logs.update({"time/generate_s": t1 - t0, "time/reward_s": t2 - t1, "time/step_s": time.time() - t0,
                         "tokens/per_second": tokens / max(time.time() - t0, 1e-9)})
            step = trainer.current_step
            run_dir.log_metrics(step, logs)
            run_dir.append_samples("train", [
                {"step": step, "query": q, "response": r, "reward": s}
                for q, r, s in list(zip(query_texts, response_texts, scores))[: args.log_samples]
            ])
            bar.update(1, tokens=tokens, **logs)
            if args.save_steps and step % args.save_steps == 0 and step < config.steps:
                _save_checkpoint(trainer, run_dir)
                last_saved = step
        interrupted = stop.stop and trainer.current_step < config.steps

    # -- save: the model (with value head), a checkpoint for --resume, samples, plots, report
    trainer.save_pretrained(str(run_dir.model_dir))
    if last_saved != trainer.current_step:
        _save_checkpoint(trainer, run_dir)
    after = _samples(trainer, tokenizer, sample_prompts, reward_fn, args, config.seed) if sample_prompts else []
    if after:
        run_dir.save_samples("after", after)
    records = run_dir.read_metrics()
    summary = _summary(args, config, trainer.current_step, records, reward_what, interrupted)
    written = finish_run(run_dir, Finish(
        command="ppo", title=f"PPO: {args.model_name_or_path}", summary=summary, plots=PLOTS,
        samples_table=_before_after_table(run_dir.read_samples("before"), after), tags=["reinforcement-learning"],
        card_body=summary + "\n\n" + model_loading_note(run_dir, model_path, args.use_peft),
    ), draw_plots=args.plots)
    return run_result(run_dir, interrupted, written, steps=trainer.current_step)


# ---------------------------------------------------------------------- helpers
def _check(args: PPOScriptArguments) -> None:
    args.check_new_tokens()
    if args.prompt_min_tokens is not None and (args.prompt_max_tokens is None or not 0 < args.prompt_min_tokens <= args.prompt_max_tokens):
        raise CLIError("--prompt_min_tokens needs --prompt_max_tokens and must lie in [1, prompt_max_tokens].")
    if args.save_steps < 0:
        raise CLIError(f"--save_steps must be >= 0, got {args.save_steps}.")
    if args.use_peft and args.num_shared_layers is not None:
        raise CLIError("--use_peft and --num_shared_layers both choose the reference model; drop one "
                       "(with LoRA the reference is the model with its adapter switched off).")


def _pick_prompts(n_prompts: int, per_process: int, step_seed: int, rank: int, processes: int) -> list[int]:
    """This process's prompts of a step: its slice of one draw for all processes (distinct prompts across
    processes while there are enough), from ``(step_seed, rank)`` only. One process: the draw itself."""
    if per_process * processes <= n_prompts:
        order = random.Random(step_seed).sample(range(n_prompts), per_process * processes)
        return order[rank * per_process:(rank + 1) * per_process]
    return random.Random(step_seed * _RANK_SEED_STRIDE + rank).sample(range(n_prompts), per_process)


def _tokenize_prompts(prompts, tokenizer, args, seed):
    import torch

    rng = random.Random(seed)
    out = []
    for i, text in enumerate(prompts):
        ids = tokenizer(text, add_special_tokens=True)["input_ids"]
        if args.prompt_max_tokens:
            limit = rng.randint(args.prompt_min_tokens, args.prompt_max_tokens) if args.prompt_min_tokens else args.prompt_max_tokens
            ids = ids[:limit]
        if not ids:
            raise CLIError(f"prompt {i} ({text!r}) is empty after tokenisation; remove it from the dataset.")
        out.append(torch.tensor(ids, dtype=torch.long))
    return out


def _samples(trainer, tokenizer, prompts, reward_fn, args, seed) -> list[dict]:
    from ._load import generate_texts

    responses = generate_texts(trainer.model, tokenizer, prompts, args.sample_max_new_tokens, seed, accelerator=trainer.accelerator)
    scored = responses if args.reward_text == "response" else [p + r for p, r in zip(prompts, responses)]
    return [{"prompt": p, "response": r, "reward": s} for p, r, s in zip(prompts, responses, reward_fn(scored))]


def _before_after_table(before: list[dict], after: list[dict]) -> list[dict]:
    rows = []
    for i, a in enumerate(after):
        b = before[i] if i < len(before) else {}
        rows.append({"prompt": a["prompt"], "before": b.get("response", ""), "reward before": b.get("reward", ""),
                     "after": a["response"], "reward after": a["reward"]})
    return rows


def _save_checkpoint(trainer, run_dir):
    save = getattr(trainer, "save_checkpoint", None)
    if save is None:
        return None  # this rlft's PPOTrainer cannot checkpoint yet: the run still saves model/ at the end
    return save(str(run_dir.checkpoints_dir))


def _load_checkpoint(trainer, run_dir) -> None:
    if not hasattr(trainer, "load_checkpoint"):
        raise CLIError(
            "--resume for PPO needs PPOTrainer.load_checkpoint, which this version of rlft does not have yet; "
            "start a new run from the saved model instead: --model_name_or_path <run>/model."
        )
    from ..utils.checkpoint import latest_checkpoint
    from ._run import no_checkpoint_message

    if not run_dir.checkpoints_dir.is_dir() or latest_checkpoint(run_dir.checkpoints_dir) is None:
        raise CLIError(no_checkpoint_message(run_dir, "ppo"))
    try:
        trainer.load_checkpoint(str(run_dir.checkpoints_dir))
    except (FileNotFoundError, ValueError) as err:
        raise CLIError(f"--resume: {err}") from None


def _summary(args, config, steps, records, reward_what, interrupted) -> str:
    lines = [
        f"PPO fine-tuning of `{args.model_name_or_path}` on prompts from `{args.dataset}` with reward {reward_what}.",
        "",
        done_line("steps done", steps, config.steps, interrupted),
        f"- mean reward, first steps -> last steps: {trend(records, 'env/reward_mean')}",
        f"- KL to the reference at the end: {fmt(mean_of(records, 'objective/kl', False))} nats",
        "",
        config_table(config, ["batch_size", "mini_batch_size", "ppo_epochs", "learning_rate", "init_kl_coef", "adap_kl_ctrl", "target", "seed"]),
    ]
    return "\n".join(lines)
