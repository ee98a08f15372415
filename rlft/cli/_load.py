"""Models, tokenizers, datasets and reward functions for the command line, from local paths only.

Models: a folder written by ``save_pretrained``, or a pseudo name ``tiny-<arch>``
(``tiny-gpt2``, ``tiny-llama``, ``tiny-t5``, ...) that builds rlft's tiny random model and
tokenizer offline. Datasets: a .json/.jsonl/.csv/.parquet file, a ``datasets.save_to_disk``
folder, or ``tiny`` (lines of rlft's test corpus). Rewards: see `load_text_reward`.
"""

from __future__ import annotations

import atexit
import importlib
import importlib.util
import math
import os
import random
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable, Sequence

from ._args import CLIError

TINY_PREFIX = "tiny-"
TINY_DATASET = "tiny"
#: Rows of the tiny pseudo dataset.
TINY_ROWS = 64


# ====================================================================== models
def is_tiny(name: str | None) -> bool:
    return bool(name) and str(name).startswith(TINY_PREFIX)


def tiny_model_folder(name: str) -> str:
    """Build rlft's tiny random model ``tiny-<arch>`` with its tokenizer in a temporary folder; returns the folder."""
    from ..testing import tiny

    arch = name[len(TINY_PREFIX):]
    if arch not in tiny.ARCHS:
        raise CLIError(f"unknown tiny model {name!r}; choose one of {', '.join(TINY_PREFIX + a for a in tiny.ARCHS)}.")
    folder = Path(tempfile.mkdtemp(prefix=f"rlft-{name}-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)  # rebuilt identically (fixed seeds) when needed again
    tokenizer = tiny.build_tokenizer(folder)
    _save_here(tiny.build_model(arch, tokenizer), folder)
    return str(folder)


def _save_here(model, folder: Path) -> None:
    """``model.save_pretrained(folder)`` by this process, also in a multi-process run.

    Once torch.distributed is initialized, transformers 5 writes the weights on rank 0 only; each
    process builds its tiny model in its own temporary folder, so each writes its own files here.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        model.save_pretrained(str(folder))
        return
    from safetensors.torch import save_model

    model.config.save_pretrained(str(folder))
    model.generation_config.save_pretrained(str(folder))
    save_model(model, str(folder / "model.safetensors"), metadata={"format": "pt"})  # a tied head is stored once


#: What marks a folder as a model written by save_pretrained: a full model, or a peft adapter.
MODEL_CONFIG = "config.json"
ADAPTER_CONFIG = "adapter_config.json"


def model_folder(name: str | None, option: str = "--model_name_or_path") -> str:
    """A local model folder for ``name`` (tiny pseudo names are built); clear errors otherwise.

    The folder holds a model (config.json) or a peft adapter (adapter_config.json, e.g. a run's
    ``model/`` after LoRA training: see `adapter_base`). A run directory, an empty folder or any
    other folder is refused with what to pass instead.
    """
    if not name:
        raise CLIError(f"{option} is required: a local model folder, or tiny-gpt2 (or --tiny) for a smoke run.")
    if is_tiny(name):
        return tiny_model_folder(name)
    path = Path(name)
    if not path.is_dir():
        raise CLIError(
            f"{option} {name!r} is not a folder. rlft's command line loads models from local folders written by "
            "save_pretrained (nothing is downloaded); use tiny-gpt2 for a smoke run."
        )
    if (path / MODEL_CONFIG).is_file() or (path / ADAPTER_CONFIG).is_file():
        return str(name)
    if (path / "config.yaml").is_file() and (path / "model").is_dir():
        raise CLIError(f"{option} {name}: this is an rlft run directory; its trained model is {path / 'model'} "
                       f"(pass {option} {path / 'model'}).")
    if not any(path.iterdir()):
        raise CLIError(f"{option} {name}: the folder is empty; pass a folder written by save_pretrained.")
    raise CLIError(f"{option} {name}: no {MODEL_CONFIG} (nor {ADAPTER_CONFIG}) in it, so it is not a model saved "
                   "with save_pretrained; pass the folder that holds config.json.")


def adapter_base(path: str) -> str | None:
    """For a peft adapter folder: the base model folder it names (checked to exist); None for a full model."""
    import json

    adapter_config = Path(path) / ADAPTER_CONFIG
    if (Path(path) / MODEL_CONFIG).is_file() or not adapter_config.is_file():
        return None
    base = json.loads(adapter_config.read_text(encoding="utf-8")).get("base_model_name_or_path")
    if not base or not (Path(base) / MODEL_CONFIG).is_file():
        raise CLIError(
            f"{path} is a LoRA adapter whose base model {base!r} is not a local model folder any more; "
            f"copy the base model back there, or set base_model_name_or_path in {adapter_config}."
        )
    return str(base)


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model", "spiece.model")


def load_tokenizer(path: str, padding_side: str | None = None):
    """AutoTokenizer from ``path`` (an adapter folder without tokenizer files: its base model's);
    a tokenizer without a pad token pads with its EOS token (as for GPT-2)."""
    from transformers import AutoTokenizer

    folder = Path(path)
    if folder.is_dir() and not any((folder / f).is_file() for f in _TOKENIZER_FILES):
        base = adapter_base(path)
        if base is None:
            raise CLIError(f"{path} holds no tokenizer files ({', '.join(_TOKENIZER_FILES[:2])}, ...); "
                           "pass the tokenizer's folder with --tokenizer_name_or_path.")
        path = base
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise CLIError(f"the tokenizer in {path} has neither a pad nor an EOS token; add a pad token to it.")
        tokenizer.pad_token = tokenizer.eos_token
    if padding_side is not None:
        tokenizer.padding_side = padding_side
    return tokenizer


def is_encoder_decoder(path: str) -> bool:
    from transformers import AutoConfig

    return bool(getattr(AutoConfig.from_pretrained(adapter_base(path) or path), "is_encoder_decoder", False))


def load_lm(path: str, tokenizer=None):
    """AutoModelForCausalLM, or AutoModelForSeq2SeqLM for encoder-decoder folders; an adapter folder
    loads its base model with the adapter merged in (for sampling and as a starting point).

    With ``tokenizer``, the model's pad token is set to the tokenizer's (see `align_pad_token`).
    """
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    auto = AutoModelForSeq2SeqLM if is_encoder_decoder(path) else AutoModelForCausalLM
    base = adapter_base(path)
    if base is None:
        model = auto.from_pretrained(path)
    else:
        from peft import PeftModel

        model = PeftModel.from_pretrained(auto.from_pretrained(base), path).merge_and_unload()
    if auto is AutoModelForCausalLM and getattr(model, "loss_type", None) is None:
        # transformers derives loss_type from the class name; GPT2LMHeadModel & co. match none, so every
        # run would warn "loss_type=None ... unrecognized" before using this same causal-LM loss.
        model.loss_type = "ForCausalLM"
    if tokenizer is not None:
        align_pad_token(model, tokenizer)
    return model


def align_pad_token(model, tokenizer) -> None:
    """Give the model (config and generation config) the tokenizer's pad token.

    `load_tokenizer` pads with EOS when a tokenizer has no pad token; a model config that still
    says pad=None makes transformers' Trainer "align" it with a warning on every run.
    """
    model.config.pad_token_id = tokenizer.pad_token_id
    generation = getattr(model, "generation_config", None)
    if generation is not None:
        generation.pad_token_id = tokenizer.pad_token_id


# ====================================================================== datasets
def load_rows(spec: str | None, split: str = "train", kind: str = "text", option: str = "--dataset"):
    """A ``datasets.Dataset`` from a file, a saved folder, or ``tiny`` (then ``kind`` picks its columns:
    "text", "prompt" or "preference")."""
    import datasets

    if not spec:
        raise CLIError(f"{option} is required: a .json/.jsonl/.csv/.parquet file, a datasets.save_to_disk folder, or 'tiny'.")
    if spec == TINY_DATASET:
        return datasets.Dataset.from_list(tiny_rows(kind))
    path = Path(spec)
    if path.is_dir():
        try:
            data = datasets.load_from_disk(str(path))
        except FileNotFoundError as err:
            raise CLIError(f"{option} {spec}: not a folder written by datasets' save_to_disk ({err}).") from None
        if isinstance(data, datasets.DatasetDict):
            if split not in data:
                raise CLIError(f"{option} {spec} has the splits {sorted(data)}; choose one with --dataset_split.")
            data = data[split]
        return data
    if not path.is_file():
        raise CLIError(f"{option} {spec!r}: no such file or folder (datasets are read from local paths only).")
    suffix = path.suffix.lower()
    if suffix in (".json", ".jsonl"):
        return datasets.Dataset.from_list(_read_json_rows(path))
    if suffix in (".csv", ".tsv"):
        import pandas as pd

        return datasets.Dataset.from_pandas(pd.read_csv(path, sep="\t" if suffix == ".tsv" else ","), preserve_index=False)
    if suffix == ".parquet":
        import pandas as pd

        return datasets.Dataset.from_pandas(pd.read_parquet(path), preserve_index=False)
    raise CLIError(f"{option} {spec}: unsupported file type {suffix!r}; use .json, .jsonl, .csv, .tsv or .parquet.")


def _read_json_rows(path: Path) -> list[dict]:
    import json

    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if stripped.startswith("["):
        rows = json.loads(text)
    elif stripped.startswith("{") and path.suffix.lower() == ".json" and "\n{" not in stripped:
        data = json.loads(text)
        lists = [v for v in data.values() if isinstance(v, list)] if isinstance(data, dict) else []
        rows = lists[0] if len(lists) == 1 else [data]
    else:
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise CLIError(f"{path}: line {number} is not JSON ({err.msg}).") from None
    if not rows or not all(isinstance(r, dict) for r in rows):
        raise CLIError(f"{path}: expected JSON objects (one per line, or a list of them); found none.")
    return rows


def tiny_rows(kind: str) -> list[dict]:
    """Deterministic rows from rlft's test corpus: texts, prompts, or preference triples."""
    from ..testing.tiny import corpus_lines

    lines = [" ".join(line.split()) for line in corpus_lines() if len(line.split()) >= 8][:TINY_ROWS]
    if kind == "text":
        return [{"text": line} for line in lines]
    if kind == "prompt":
        return [{"query": " ".join(line.split()[:6])} for line in lines]
    if kind == "preference":
        rng = random.Random(0)
        rows = []
        for line in lines:
            words = line.split()
            rejected = words[4:12]
            rng.shuffle(rejected)
            rows.append({"prompt": " ".join(words[:4]), "chosen": " " + " ".join(words[4:12]), "rejected": " " + " ".join(rejected)})
        return rows
    raise ValueError(f"unknown tiny dataset kind {kind!r}")


def require_columns(dataset, columns: Sequence[str], option: str) -> None:
    missing = [c for c in columns if c not in dataset.column_names]
    if missing:
        raise CLIError(f"the dataset has no column(s) {missing} (it has {dataset.column_names}); set {option}.")


def pick_column(dataset, wanted: str | None, candidates: Sequence[str], option: str) -> str:
    """``wanted`` if the dataset has it, else the first of ``candidates`` it has; a clear error otherwise."""
    if wanted:
        require_columns(dataset, [wanted], option)
        return wanted
    for name in candidates:
        if name in dataset.column_names:
            return name
    raise CLIError(f"the dataset has none of the columns {list(candidates)} (it has {dataset.column_names}); set {option}.")


def load_prompts(args) -> list[str]:
    """The prompts of ppo and bon: --prompt_column of --dataset (default: query, prompt or text), the first --max_prompts."""
    rows = load_rows(args.dataset, args.dataset_split, kind="prompt")
    column = pick_column(rows, args.prompt_column, ("query", "prompt", "text"), "--prompt_column")
    return [str(p) for p in rows[column]][: args.max_prompts]


# ====================================================================== rewards
def _vader() -> Callable[[list[str]], list[float]]:
    try:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ImportError as err:
        raise CLIError("--reward vader needs the vaderSentiment package: pip install vaderSentiment.") from err
    analyzer = SentimentIntensityAnalyzer()
    return lambda texts: [analyzer.polarity_scores(t)["compound"] for t in texts]


def _length() -> Callable[[list[str]], list[float]]:
    # A toy reward for smoke runs: longer texts score higher (a tenth of a point per word).
    return lambda texts: [len(t.split()) / 10.0 for t in texts]


#: Built-in text rewards: name -> (description, factory of ``texts -> scores``).
TEXT_REWARDS: dict[str, tuple[str, Callable]] = {
    "vader": ("VADER sentiment compound score in [-1, 1] (needs vaderSentiment)", _vader),
    "length": ("toy reward: words / 10 (for smoke runs)", _length),
}


def import_callable(spec: str, option: str = "--reward") -> Callable:
    """``package.module:function`` or ``path/to/file.py:function`` -> the function."""
    module_name, _, attr = spec.rpartition(":")
    if not module_name or not attr:
        raise CLIError(f"{option} {spec!r}: expected module:function or path/to/file.py:function.")
    try:
        if module_name.endswith(".py") or os.sep in module_name or "/" in module_name:
            file = Path(module_name)
            if not file.is_file():
                raise CLIError(f"{option} {spec!r}: no file {file}.")
            module_spec = importlib.util.spec_from_file_location(f"rlft_user_{file.stem}", file)
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            if os.getcwd() not in sys.path and "" not in sys.path:
                sys.path.insert(0, os.getcwd())  # as `python -m` would, so a module beside the user is found
            module = importlib.import_module(module_name)
    except ImportError as err:
        raise CLIError(f"{option} {spec!r}: cannot import {module_name!r} ({err}).") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise CLIError(f"{option} {spec!r}: {module_name} has no callable {attr!r}.")
    return fn


def load_text_reward(spec: str | None, batch_size: int = 16, label: str | None = None, device: str | None = None):
    """A function ``texts -> list[float]`` from ``spec``.

    ``spec`` is a built-in name (`TEXT_REWARDS`), a folder holding a sequence-classification
    reward model (the logit of ``label`` is the score; a one-logit model needs no label), or
    ``module:function`` / ``file.py:function`` naming ``f(texts: list[str]) -> list[float]``.
    Returns (function, description).
    """
    if not spec:
        raise CLIError(
            f"--reward is required: {', '.join(TEXT_REWARDS)}, a reward-model folder, or module:function (f(texts) -> scores)."
        )
    if spec in TEXT_REWARDS:
        fn, what = TEXT_REWARDS[spec][1](), f"{spec}: {TEXT_REWARDS[spec][0]}"
    elif Path(spec).is_dir():
        fn, what = _reward_model(spec, batch_size, label, device), f"reward model {spec}"
    elif ":" in spec:
        fn, what = import_callable(spec), f"function {spec}"
    else:
        raise CLIError(
            f"--reward {spec!r} is neither a built-in ({', '.join(TEXT_REWARDS)}), a folder, nor module:function."
        )
    return _checked(fn, spec), what


def _checked(fn: Callable, spec: str) -> Callable[[list[str]], list[float]]:
    def score(texts: list[str]) -> list[float]:
        out = fn(list(texts))
        if hasattr(out, "detach"):
            out = out.detach().float().cpu().reshape(-1).tolist()
        elif hasattr(out, "tolist"):
            out = out.reshape(-1).tolist()
        out = list(out)
        if len(out) != len(texts):
            raise CLIError(f"--reward {spec}: returned {len(out)} scores for {len(texts)} texts; return one per text.")
        values = [float(v) for v in out]
        if not all(math.isfinite(v) for v in values):
            raise CLIError(f"--reward {spec}: returned a non-finite score {values}.")
        return values

    return score


def _reward_model(folder: str, batch_size: int, label: str | None, device: str | None):
    import torch

    tokenizer = load_tokenizer(folder, padding_side="right")
    model = load_reward_model(folder)
    if device:
        model.to(device)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    index = _label_index(model.config, label, folder)
    max_length = min(getattr(tokenizer, "model_max_length", 512) or 512, 1024)

    @torch.no_grad()
    def score(texts: list[str]) -> list[float]:
        out = []
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(texts[start : start + batch_size], return_tensors="pt", padding=True, truncation=True, max_length=max_length)
            logits = model(**enc.to(model.device)).logits  # (b, num_labels)
            out.extend(logits[:, index].float().cpu().tolist())
        return out

    return score


def load_reward_model(folder: str, option: str = "--reward"):
    """A trained sequence classifier from ``folder``, in eval mode.

    Refused when its classification head is not in the folder: transformers would initialise it
    at random and every score would be noise (the usual cause: a causal LM given as a reward).
    """
    import transformers
    from transformers import AutoModelForSequenceClassification

    base = adapter_base(folder) if (Path(folder) / ADAPTER_CONFIG).is_file() else None
    if base is None and not (Path(folder) / MODEL_CONFIG).is_file():
        raise CLIError(f"{option} {folder}: no {MODEL_CONFIG}; pass a reward model folder (a run's model/ of rlft reward).")
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # the load report of a missing head is replaced by the error below
    try:
        if base is not None:  # a LoRA reward model (rlft reward --use_peft): the head is saved with the adapter
            return _lora_reward_model(folder, base, option)
        model, info = AutoModelForSequenceClassification.from_pretrained(folder, output_loading_info=True)
    finally:
        transformers.logging.set_verbosity(verbosity)
    new_weights = sorted(set(info.get("missing_keys") or ()) | {str(k[0]) if isinstance(k, tuple) else str(k) for k in info.get("mismatched_keys") or ()})
    if new_weights:
        raise CLIError(
            f"{option} {folder}: this is not a trained reward model: its weights {', '.join(new_weights[:3])} are not "
            "in the folder and would be random. Train one first (rlft reward --model_name_or_path "
            f"{folder} --dataset pairs.jsonl), then pass {option} <that run>/model."
        )
    return model.eval()


def _lora_reward_model(folder: str, base: str, option: str):
    """A LoRA reward model: its base as a one-logit classifier, the adapter and the saved head merged in."""
    import json

    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    saved = json.loads((Path(folder) / ADAPTER_CONFIG).read_text(encoding="utf-8")).get("modules_to_save") or []
    if not saved:
        raise CLIError(f"{option} {folder}: this LoRA adapter does not save a classification head, so the reward "
                       "would come from a random head; train it with rlft reward --use_peft (task type SEQ_CLS).")
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)
    return PeftModel.from_pretrained(model, folder).merge_and_unload().eval()


def _label_index(config, label: str | None, folder: str) -> int:
    names = {str(v): int(k) for k, v in (getattr(config, "id2label", None) or {}).items()}
    if label is None:
        if config.num_labels == 1:
            return 0
        raise CLIError(
            f"the reward model in {folder} has {config.num_labels} labels {sorted(names, key=names.get)}; "
            "choose the rewarded one with --reward_label (a name or an index)."
        )
    if label in names:
        return names[label]
    if label.lstrip("-").isdigit() and -config.num_labels <= int(label) < config.num_labels:
        return int(label) % config.num_labels
    raise CLIError(f"--reward_label {label!r} is not a label of {folder}: {sorted(names, key=names.get)}.")


# ====================================================================== generation
def generate_texts(model, tokenizer, prompts: Sequence[str], max_new_tokens: int, seed: int, batch_size: int = 8,
                   accelerator=None) -> list[str]:
    """Sampled continuations (text after the prompt) of ``prompts`` under a fixed seed, not touching the global RNG.

    With the trainer's ``accelerator``, a sharded model (FSDP2, ZeRO-3) is gathered once for the call
    (`rlft.trainer._sharding.gathered_parameters`); every process must then call this.
    """
    import contextlib

    import torch

    from ..trainer._sharding import gathered_parameters

    from ..utils.sampling_generate import generate as sampling_generate

    model_to_use = getattr(model, "pretrained_model", model)
    device = next(model_to_use.parameters()).device
    enc_dec = bool(getattr(model_to_use.config, "is_encoder_decoder", False))
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "right" if enc_dec else "left"
    was_training = model_to_use.training
    model_to_use.eval()
    out: list[str] = []
    try:
        gathered = gathered_parameters(model, accelerator) if accelerator is not None else contextlib.nullcontext()
        with gathered, torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(seed)
            for start in range(0, len(prompts), batch_size):
                enc = tokenizer(list(prompts[start : start + batch_size]), return_tensors="pt", padding=True).to(device)
                generated = sampling_generate(
                    model_to_use, **enc, max_new_tokens=max_new_tokens, do_sample=True, top_k=0, top_p=1.0,
                    pad_token_id=tokenizer.pad_token_id,
                )
                new = generated if enc_dec else generated[:, enc["input_ids"].shape[1]:]
                out.extend(tokenizer.batch_decode(new, skip_special_tokens=True))
    finally:
        tokenizer.padding_side = old_side
        model_to_use.train(was_training)
    return out
