"""Direct preference optimisation, the usage of TRL 0.7.10's ``examples/scripts/dpo.py`` (our wording).

Anthropic HH dialogues split into prompt / chosen / rejected at the last "Assistant:", a policy
and a reference model, transformers 4 TrainingArguments (``evaluation_strategy``: needs
RLFT_LEGACY=1) and ``DPOTrainer(model, model_ref, args=..., beta=..., tokenizer=...)`` with its
length limits, then ``train``. Differences from TRL: the import, local paths, smaller sizes, and
``bf16`` as an option (TRL hard-coded True; a CPU without bf16 support cannot run that).
"""

from dataclasses import dataclass, field
from typing import Dict, Optional

import torch
from datasets import Dataset, load_dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer, HfArgumentParser, TrainingArguments

from rlft import DPOTrainer


@dataclass
class ScriptArguments:
    # data and model
    beta: Optional[float] = field(default=0.1, metadata={"help": "DPO temperature"})
    model_name_or_path: Optional[str] = field(default="gpt2", metadata={"help": "policy to train"})
    dataset_name: Optional[str] = field(default="Anthropic/hh-rlhf", metadata={"help": "preference dataset"})
    learning_rate: Optional[float] = field(default=1e-3, metadata={"help": "learning rate"})
    per_device_train_batch_size: Optional[int] = field(default=4, metadata={"help": "batch size"})
    gradient_accumulation_steps: Optional[int] = field(default=1, metadata={"help": "accumulation steps"})
    max_length: Optional[int] = field(default=512, metadata={"help": "longest prompt + completion"})
    max_prompt_length: Optional[int] = field(default=128, metadata={"help": "longest prompt"})
    max_target_length: Optional[int] = field(default=128, metadata={"help": "longest completion (encoder-decoder)"})
    label_pad_token_id: Optional[int] = field(default=-100, metadata={"help": "label of padding"})
    max_steps: Optional[int] = field(default=1000, metadata={"help": "optimizer steps"})
    eval_steps: Optional[int] = field(default=500, metadata={"help": "evaluate every this many steps"})
    bf16: Optional[bool] = field(default=True, metadata={"help": "bfloat16 mixed precision"})
    # LoRA
    use_peft: Optional[bool] = field(default=False, metadata={"help": "train a LoRA adapter"})
    peft_lora_r: Optional[int] = field(default=64, metadata={"help": "LoRA rank"})
    peft_lora_alpha: Optional[int] = field(default=16, metadata={"help": "LoRA alpha"})
    # instrumentation
    sanity_check: Optional[bool] = field(default=True, metadata={"help": "only the first 1000 rows"})
    report_to: Optional[str] = field(default="none", metadata={"help": "trackers"})
    # for distributed runs
    ignore_bias_buffers: Optional[bool] = field(default=False, metadata={"help": "hide bool buffers from DDP"})
    gradient_checkpointing: Optional[bool] = field(default=False, metadata={"help": "recompute activations"})
    generate_during_eval: Optional[bool] = field(default=False, metadata={"help": "sample at each evaluation"})


def extract_anthropic_prompt(prompt_and_response):
    """Everything up to and including the last "\\n\\nAssistant:"."""
    marker = "\n\nAssistant:"
    at = prompt_and_response.rfind(marker)
    assert at != -1, f"no '{marker}' in {prompt_and_response!r}"
    return prompt_and_response[: at + len(marker)]


def get_hh(dataset_name: str, split: str, sanity_check: bool = False, cache_dir: str = None) -> Dataset:
    """HH rows as {"prompt", "chosen", "rejected"}, the completions without the shared prompt."""
    dataset = load_dataset(dataset_name, split=split, cache_dir=cache_dir)
    if sanity_check:
        dataset = dataset.select(range(min(len(dataset), 1000)))

    def split_row(row) -> Dict[str, str]:
        prompt = extract_anthropic_prompt(row["chosen"])
        return {"prompt": prompt, "chosen": row["chosen"][len(prompt):], "rejected": row["rejected"][len(prompt):]}

    return dataset.map(split_row)


if __name__ == "__main__":
    parser = HfArgumentParser(ScriptArguments)
    script_args = parser.parse_args_into_dataclasses()[0]

    # 1. policy and reference
    model = AutoModelForCausalLM.from_pretrained(script_args.model_name_or_path)
    if script_args.ignore_bias_buffers:
        # DDP cannot broadcast bool buffers
        model._ddp_params_and_buffers_to_ignore = [
            name for name, buffer in model.named_buffers() if buffer.dtype == torch.bool
        ]
    model_ref = None if script_args.use_peft else AutoModelForCausalLM.from_pretrained(script_args.model_name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(script_args.model_name_or_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    # 2. train and 3. evaluation data
    train_dataset = get_hh(script_args.dataset_name, "train", sanity_check=script_args.sanity_check)
    eval_dataset = get_hh(script_args.dataset_name, "test", sanity_check=script_args.sanity_check)

    # 4. training arguments, transformers 4 spelling
    training_args = TrainingArguments(
        per_device_train_batch_size=script_args.per_device_train_batch_size,
        max_steps=script_args.max_steps,
        remove_unused_columns=False,
        gradient_accumulation_steps=script_args.gradient_accumulation_steps,
        learning_rate=script_args.learning_rate,
        evaluation_strategy="steps",
        logging_first_step=True,
        logging_steps=10,
        eval_steps=script_args.eval_steps,
        output_dir="./test",
        optim="rmsprop",
        warmup_steps=150,
        report_to=script_args.report_to,
        bf16=script_args.bf16,
        gradient_checkpointing=script_args.gradient_checkpointing,
    )

    peft_config = None
    if script_args.use_peft:
        peft_config = LoraConfig(r=script_args.peft_lora_r, lora_alpha=script_args.peft_lora_alpha, bias="none",
                                 task_type="CAUSAL_LM")

    # 5. the trainer
    dpo_trainer = DPOTrainer(
        model,
        model_ref,
        args=training_args,
        beta=script_args.beta,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        tokenizer=tokenizer,
        max_length=script_args.max_length,
        max_target_length=script_args.max_target_length,
        max_prompt_length=script_args.max_prompt_length,
        generate_during_eval=script_args.generate_during_eval,
        peft_config=peft_config,
    )

    # 6. train
    dpo_trainer.train()
