"""Supervised fine-tuning, the usage of TRL 0.7.10's ``examples/scripts/sft.py`` (our wording).

An HfArgumentParser command line, a causal LM loaded with transformers 4's ``use_auth_token``
(needs RLFT_LEGACY=1), TrainingArguments, an optional LoRA config, and ``SFTTrainer`` given no
tokenizer (it loads the model's own and pads with EOS), then ``train`` and ``save_model``.
Differences from TRL: the import, local paths, smaller sizes.
"""

from dataclasses import dataclass, field
from typing import Optional

import torch
from accelerate import Accelerator
from datasets import load_dataset
from peft import LoraConfig
from tqdm import tqdm
from transformers import AutoModelForCausalLM, BitsAndBytesConfig, HfArgumentParser, TrainingArguments

from rlft import SFTTrainer

tqdm.pandas()


@dataclass
class ScriptArguments:
    model_name: Optional[str] = field(default="facebook/opt-350m", metadata={"help": "model to fine-tune"})
    dataset_name: Optional[str] = field(default="timdettmers/openassistant-guanaco", metadata={"help": "dataset"})
    dataset_text_field: Optional[str] = field(default="text", metadata={"help": "column holding the text"})
    log_with: Optional[str] = field(default="none", metadata={"help": "tracker ('none' for no tracking)"})
    learning_rate: Optional[float] = field(default=1.41e-5, metadata={"help": "learning rate"})
    batch_size: Optional[int] = field(default=64, metadata={"help": "per-device batch size"})
    seq_length: Optional[int] = field(default=512, metadata={"help": "longest input, in tokens"})
    gradient_accumulation_steps: Optional[int] = field(default=16, metadata={"help": "accumulation steps"})
    load_in_8bit: Optional[bool] = field(default=False, metadata={"help": "load the model in 8 bits"})
    load_in_4bit: Optional[bool] = field(default=False, metadata={"help": "load the model in 4 bits"})
    use_peft: Optional[bool] = field(default=False, metadata={"help": "train a LoRA adapter"})
    trust_remote_code: Optional[bool] = field(default=False, metadata={"help": "allow code from the hub"})
    output_dir: Optional[str] = field(default="output", metadata={"help": "where to save"})
    peft_lora_r: Optional[int] = field(default=64, metadata={"help": "LoRA rank"})
    peft_lora_alpha: Optional[int] = field(default=16, metadata={"help": "LoRA alpha"})
    logging_steps: Optional[int] = field(default=1, metadata={"help": "log every this many steps"})
    use_auth_token: Optional[bool] = field(default=True, metadata={"help": "use the hub token"})
    num_train_epochs: Optional[int] = field(default=3, metadata={"help": "epochs"})
    max_steps: Optional[int] = field(default=-1, metadata={"help": "optimizer steps (overrides epochs)"})
    save_steps: Optional[int] = field(default=100, metadata={"help": "save every this many steps"})
    save_total_limit: Optional[int] = field(default=10, metadata={"help": "checkpoints kept"})
    push_to_hub: Optional[bool] = field(default=False, metadata={"help": "push the result to the hub"})
    gradient_checkpointing: Optional[bool] = field(default=False, metadata={"help": "recompute activations"})
    hub_model_id: Optional[str] = field(default=None, metadata={"help": "hub repository name"})


parser = HfArgumentParser(ScriptArguments)
script_args = parser.parse_args_into_dataclasses()[0]

# 1. the model, quantised when asked
if script_args.load_in_8bit and script_args.load_in_4bit:
    raise ValueError("choose 8 bits or 4 bits, not both")
elif script_args.load_in_8bit or script_args.load_in_4bit:
    quantization_config = BitsAndBytesConfig(load_in_8bit=script_args.load_in_8bit, load_in_4bit=script_args.load_in_4bit)
    device_map = {"": Accelerator().local_process_index}  # one copy per process
    torch_dtype = torch.bfloat16
else:
    device_map = None
    quantization_config = None
    torch_dtype = None

model = AutoModelForCausalLM.from_pretrained(
    script_args.model_name,
    quantization_config=quantization_config,
    device_map=device_map,
    trust_remote_code=script_args.trust_remote_code,
    torch_dtype=torch_dtype,
    use_auth_token=script_args.use_auth_token,
)

# 2. the dataset: raw text; SFTTrainer tokenises it
dataset = load_dataset(script_args.dataset_name, split="train")

# 3. training arguments
training_args = TrainingArguments(
    output_dir=script_args.output_dir,
    per_device_train_batch_size=script_args.batch_size,
    gradient_accumulation_steps=script_args.gradient_accumulation_steps,
    learning_rate=script_args.learning_rate,
    logging_steps=script_args.logging_steps,
    num_train_epochs=script_args.num_train_epochs,
    max_steps=script_args.max_steps,
    report_to=script_args.log_with,
    save_steps=script_args.save_steps,
    save_total_limit=script_args.save_total_limit,
    push_to_hub=script_args.push_to_hub,
    hub_model_id=script_args.hub_model_id,
    gradient_checkpointing=script_args.gradient_checkpointing,
)

# 4. LoRA, when asked
if script_args.use_peft:
    peft_config = LoraConfig(r=script_args.peft_lora_r, lora_alpha=script_args.peft_lora_alpha, bias="none",
                             task_type="CAUSAL_LM")
else:
    peft_config = None

# 5. train; no tokenizer given: the trainer loads the model's own
trainer = SFTTrainer(
    model=model,
    args=training_args,
    max_seq_length=script_args.seq_length,
    train_dataset=dataset,
    dataset_text_field=script_args.dataset_text_field,
    peft_config=peft_config,
)
trainer.train()

# 6. save
trainer.save_model(script_args.output_dir)
