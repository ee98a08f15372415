"""Run one script of this folder as ``__main__`` and print what the test checks, as one JSON line.

    python runner.py SCRIPT [script arguments...]

The script runs unchanged (``runpy``, its own ``sys.argv``); afterwards a summary function named
after it reads the script's globals (the trainer, the last stats, the rewards it computed) and
recomputes what it can independently: the reward pipeline's scores from the classifier's own
forward, the weights the training changed. The line starts with ``RLFT-SUMMARY``.
"""

from __future__ import annotations

import glob
import json
import runpy
import sys
from pathlib import Path

import torch

MARK = "RLFT-SUMMARY "


def _max_change(model, reference_path: str) -> float:
    """Largest absolute change of any weight of ``model`` (a plain transformers model) against its saved
    checkpoint, over the weights the checkpoint holds (a head added on top starts random: not compared)."""
    from safetensors.torch import load_file

    before = load_file(str(Path(reference_path) / "model.safetensors"))
    after = model.state_dict()
    common = [k for k in before if k in after]
    assert len(common) >= len(before) // 2, f"checkpoint keys do not match the model: {sorted(before)[:3]}"
    return max((after[k].float() - before[k].float()).abs().max().item() for k in common)


def _classifier_logits(folder: str, texts: list[str]) -> list[list[float]]:
    """Each text's logits from the saved classifier, one text at a time (no padding, no pipeline)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    with torch.no_grad():
        return [model(**tok(t, return_tensors="pt")).logits[0].tolist() for t in texts]


def _policy_weights(ppo_trainer):
    """The trained transformers model inside the (unwrapped) value-head policy."""
    return ppo_trainer.accelerator.unwrap_model(ppo_trainer.model).pretrained_model


def ppo(g: dict) -> dict:
    trainer, args = g["ppo_trainer"], g["args"]
    texts, rewards = g["texts"], [float(r) for r in g["rewards"]]
    logits = _classifier_logits(args.ppo_config.reward_model.split(":")[1], texts)
    policy = _policy_weights(trainer)
    if args.use_peft:
        policy = policy.merge_and_unload()
    return {
        "steps": trainer.current_step,
        "dataset_rows": len(g["dataset"]),
        "batch_size": args.ppo_config.batch_size,
        "stats_keys": sorted(g["stats"]),
        "rewards": rewards,
        "positive_logits": [row[1] for row in logits],
        "negative_logits": [row[0] for row in logits],
        "ref_rewards": [float(r) for r in g["batch"]["ref_rewards"]],
        "ref_positive_logits": [row[1] for row in _classifier_logits(args.ppo_config.reward_model.split(":")[1], g["ref_texts"])],
        "max_weight_change": _max_change(policy, args.ppo_config.model_name),
        "reference_is_none": trainer.ref_model is None,
        "is_peft": trainer.is_peft_model,
    }


def _log_keys(trainer) -> list[str]:
    return sorted({k for entry in trainer.state.log_history for k in entry})


def sft(g: dict) -> dict:
    trainer, args = g["trainer"], g["script_args"]
    saved = Path(args.output_dir)
    model = trainer.model.merge_and_unload() if args.use_peft else trainer.model
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return {
        "global_step": trainer.state.global_step,
        "losses": losses,
        "max_weight_change": _max_change(model, args.model_name),
        "saved_files": sorted(p.name for p in saved.iterdir()),
        "tokenizer_pad_is_eos": trainer.processing_class.pad_token == trainer.processing_class.eos_token,
        "is_peft": args.use_peft,
    }


def dpo(g: dict) -> dict:
    trainer, args = g["dpo_trainer"], g["script_args"]
    model = trainer.model.merge_and_unload() if args.use_peft else trainer.model
    return {
        "global_step": trainer.state.global_step,
        "log_keys": _log_keys(trainer),
        "eval_losses": [e["eval_loss"] for e in trainer.state.log_history if "eval_loss" in e],
        "max_weight_change": _max_change(model, args.model_name_or_path),
        "train_rows": len(g["train_dataset"]),
        "first_prompt": g["train_dataset"][0]["prompt"],
    }


def reward_modeling(g: dict) -> dict:
    trainer, args = g["trainer"], g["args"]
    model = trainer.model.merge_and_unload() if args.use_peft else trainer.model
    return {
        "global_step": trainer.state.global_step,
        "eval_strategy": str(getattr(trainer.args.eval_strategy, "value", trainer.args.eval_strategy)),
        "evaluations": len([e for e in trainer.state.log_history if "eval_loss" in e]),
        "max_weight_change": _max_change(model, args.model_name),
        "num_labels": trainer.model.config.num_labels,
    }


def stack_llama_rl(g: dict) -> dict:
    trainer, args, config = g["ppo_trainer"], g["script_args"], g["config"]
    saved = {Path(p).name: sorted(f.name for f in Path(p).iterdir()) for p in glob.glob(args.output_dir + "step_*")}
    logits = _classifier_logits(args.reward_model_name, g["texts"])
    return {
        "steps": trainer.current_step,
        "total_ppo_epochs": config.total_ppo_epochs,
        "batches_in_dataloader": len(trainer.dataloader),
        "saved": saved,
        "response_lengths": [len(r) for r in g["response_tensors"]],
        "rewards": [float(r) for r in g["rewards"]],
        "reward_model_scores": [row[0] - args.reward_baseline for row in logits],
        "current_device": str(trainer.model.current_device),
        "reference_is_none": trainer.ref_model is None,
        "is_peft": trainer.is_peft_model,
    }


def _seq_cls_adapter_logits(adapter: str, base: str, texts: list[str]) -> list[list[float]]:
    """Each text's logits from the reward adapter loaded as peft's own sequence classifier, one text at a time."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=2)
    model = PeftModel.from_pretrained(model, adapter).eval()
    tok = AutoTokenizer.from_pretrained(base)
    with torch.no_grad():
        return [model(**tok(t, return_tensors="pt")).logits[0].tolist() for t in texts]


def multi_adapter_rl(g: dict) -> dict:
    trainer, paths = g["ppo_trainer"], g["paths"]
    wrapped = trainer.accelerator.unwrap_model(trainer.model)
    peft_model = wrapped.pretrained_model
    rm_name = wrapped.rm_adapter_name
    rm_lora = {k: v.detach().clone() for k, v in peft_model.state_dict().items() if rm_name in k}
    from safetensors.torch import load_file

    saved_rm = load_file(str(Path(paths.rm_adapter_id) / "adapter_model.safetensors"))
    # the reward score of each text alone (no padding) against peft's own sequence classifier
    alone = [wrapped.compute_reward_score(**g["tokenizer"](t, return_tensors="pt"))[0, -1].tolist() for t in g["texts"]]
    return {
        "steps": trainer.current_step,
        "rewards_shape": list(g["raw_rewards"].shape),
        "reward_score_alone": alone,
        "seq_cls_logits": _seq_cls_adapter_logits(paths.rm_adapter_id, paths.model_name, g["texts"]),
        "active_adapter_after": peft_model.active_adapter,
        "rm_lora_tensors": len(rm_lora),
        "rm_lora_saved_tensors": len([k for k in saved_rm if "lora" in k]),
        "rm_lora_changed": max(
            (v.float() - saved_rm[k.replace(f".{rm_name}", "")].float()).abs().max().item()
            for k, v in rm_lora.items() if k.replace(f".{rm_name}", "") in saved_rm
        ),
        "policy_lora_b_norm": sum(v.norm().item() for k, v in peft_model.state_dict().items() if "lora_B.default" in k),
        "reference_is_none": trainer.ref_model is None,
    }


SUMMARIES = {"multi_adapter_rl": multi_adapter_rl, "ppo": ppo, "sft": sft, "dpo": dpo, "reward_modeling": reward_modeling, "stack_llama_rl": stack_llama_rl}


def main() -> None:
    script = Path(sys.argv[1]).resolve()
    sys.argv = [str(script), *sys.argv[2:]]
    sys.path.insert(0, str(script.parent))
    g = runpy.run_path(str(script), run_name="__main__")
    summary = SUMMARIES[script.stem](g)
    print(MARK + json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
