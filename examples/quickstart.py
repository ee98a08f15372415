"""The TRL 0.7 PPO quickstart (seed 003), on a tiny offline model.

Identical to the documented quickstart except for ``trl`` -> ``rlft`` and the model:
the hub's "gpt2" is replaced by a randomly initialised tiny GPT-2 and a BPE
tokenizer trained offline, since nothing is downloaded here.
"""

import atexit
import shutil
import tempfile

# 0. imports
import torch
from transformers import GPT2Tokenizer

from rlft import AutoModelForCausalLMWithValueHead, PPOConfig, PPOTrainer
from rlft.testing.tiny import build_model, build_tokenizer

workdir = tempfile.mkdtemp(prefix="rlft-quickstart-")
atexit.register(shutil.rmtree, workdir, ignore_errors=True)
build_tokenizer(f"{workdir}/gpt2")
build_model("gpt2", GPT2Tokenizer.from_pretrained(f"{workdir}/gpt2"), save_dir=f"{workdir}/gpt2")
GPT2 = f"{workdir}/gpt2"  # stands in for "gpt2"

# 1. load a pretrained model
model = AutoModelForCausalLMWithValueHead.from_pretrained(GPT2)
ref_model = AutoModelForCausalLMWithValueHead.from_pretrained(GPT2)
tokenizer = GPT2Tokenizer.from_pretrained(GPT2)
tokenizer.pad_token = tokenizer.eos_token

# 2. initialize trainer
ppo_config = {"mini_batch_size": 1, "batch_size": 1}
config = PPOConfig(**ppo_config)
ppo_trainer = PPOTrainer(config, model, ref_model, tokenizer)

# 3. encode a query
query_txt = "This morning I went to the "
query_tensor = tokenizer.encode(query_txt, return_tensors="pt").to(model.pretrained_model.device)

# 4. generate model response
generation_kwargs = {
    "min_length": -1,
    "top_k": 0.0,
    "top_p": 1.0,
    "do_sample": True,
    "pad_token_id": tokenizer.eos_token_id,
    "max_new_tokens": 20,
}
response_tensor = ppo_trainer.generate([item for item in query_tensor], return_prompt=False, **generation_kwargs)
response_txt = tokenizer.decode(response_tensor[0])

# 5. define a reward for response
# (this could be any reward such as human feedback or output from another model)
reward = [torch.tensor(1.0, device=model.pretrained_model.device)]

# 6. train model with ppo
train_stats = ppo_trainer.step([query_tensor[0]], [response_tensor[0]], reward)

print("query:   ", repr(query_txt))
print("response:", repr(response_txt))
for key in ("objective/kl", "ppo/loss/total", "ppo/policy/approxkl", "ppo/mean_scores", "time/ppo/total"):
    print(f"{key:22s} {float(train_stats[key]):.4f}")
