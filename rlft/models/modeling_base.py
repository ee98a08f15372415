"""`PreTrainedModelWrapper` and `create_reference_model`.

A wrapper holds a transformers model (or a peft model around one) as
``pretrained_model`` and adds modules of its own (a value head, a reward score
head). Loading splits keyword arguments between the wrapper and transformers;
saving writes the transformers model exactly as transformers would, plus the
wrapper's own modules in ``value_head.safetensors`` beside it, so that
``AutoModelForCausalLM.from_pretrained(dir)`` loads the language model cleanly and
the wrapper's ``from_pretrained(dir)`` restores everything.
"""

from __future__ import annotations

import copy
import inspect
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..import_utils import is_peft_available
from ._peft import is_peft_model, require_peft, wrap_peft

logger = logging.getLogger(__name__)

#: File holding the wrapper's own modules (value head), next to the model weights.
VALUE_HEAD_FILE = "value_head.safetensors"
#: Weight files of transformers checkpoints, in the order they are searched for
#: value-head tensors written by TRL 0.7 (which stored them inside these files).
LEGACY_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
LEGACY_INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")

#: Where the transformer blocks of common architectures live, with ``{layer}``
#: standing for the block index. Used by `create_reference_model` to find the
#: first ``num_shared_layers`` blocks without being told.
LAYER_PATTERNS = (
    "transformer.h.{layer}",  # GPT-2, GPT-J, GPT-Neo, BLOOM
    "model.decoder.layers.{layer}",  # OPT, BART decoder
    "gpt_neox.layers.{layer}",  # GPT-NeoX, Pythia
    "model.layers.{layer}",  # Llama, Qwen2, Mistral, Gemma, Phi
    "encoder.block.{layer}",  # T5 encoder
    "model.encoder.layers.{layer}",  # BART encoder
)


class PreTrainedModelWrapper(nn.Module):
    """Wraps a ``transformers.PreTrainedModel`` (or a peft model) and keeps its familiar API.

    Subclasses set ``transformers_parent_class`` (the Auto class used to load the
    wrapped model), ``supported_args`` (keyword arguments the wrapper itself
    consumes) and ``supported_modules`` (attribute names of the wrapper's own
    modules, saved beside the model).

    Args:
        pretrained_model: the model to wrap.
        score_module: an optional reward score head (used with a reward adapter).
        supports_rm_adapter: whether a reward-modelling adapter is loaded.
        rm_adapter_name: the peft adapter name of that reward adapter.
        **kwargs: arguments for the subclass's own modules; names outside
            ``supported_args`` are rejected.
    """

    transformers_parent_class: Any = None
    supported_args: tuple[str, ...] = ()
    supported_modules: tuple[str, ...] = ("v_head",)
    supported_rm_modules: tuple[str, ...] = ("score",)
    supported_pretrained_model_architectures: tuple[type, ...] = ()

    def __init__(self, pretrained_model=None, score_module=None, supports_rm_adapter=False, rm_adapter_name=None, **kwargs):
        super().__init__()
        unknown = sorted(set(kwargs) - set(self.supported_args))
        if unknown:
            raise TypeError(
                f"{type(self).__name__} got unknown argument(s) {unknown}; it accepts {list(self.supported_args)} "
                "(arguments for the transformers model go to from_pretrained)."
            )
        if pretrained_model is None:
            raise ValueError(f"{type(self).__name__} needs a pretrained_model to wrap.")
        self.pretrained_model = pretrained_model
        self.config = pretrained_model.config
        self.prepare_inputs_for_generation = getattr(pretrained_model, "prepare_inputs_for_generation", None)
        self.is_loaded_in_8bit = getattr(pretrained_model, "is_loaded_in_8bit", False)
        self.is_loaded_in_4bit = getattr(pretrained_model, "is_loaded_in_4bit", False)
        self.is_sequential_parallel = False
        self.is_peft_model = is_peft_model(pretrained_model)
        if hasattr(pretrained_model, "gradient_checkpointing_disable"):
            self.gradient_checkpointing_disable = pretrained_model.gradient_checkpointing_disable
        if hasattr(pretrained_model, "gradient_checkpointing_enable"):
            self.gradient_checkpointing_enable = pretrained_model.gradient_checkpointing_enable
        self.supports_rm_adapter = supports_rm_adapter
        self.rm_adapter_name = rm_adapter_name
        self.policy_adapter_name = "default"
        if score_module is not None:
            self.score = score_module

    # ------------------------------------------------------------------ loading
    @classmethod
    def _split_kwargs(cls, kwargs: dict[str, Any]) -> tuple[dict, dict, dict]:
        """Split ``kwargs`` into (wrapper args, peft kbit-preparation args, transformers args)."""
        wrapper_kwargs, kbit_kwargs, model_kwargs = {}, {}, {}
        kbit_params: set[str] = set()
        if is_peft_available():
            from peft import prepare_model_for_kbit_training

            kbit_params = set(inspect.signature(prepare_model_for_kbit_training).parameters) - {"model"}
        for key, value in kwargs.items():
            if key in cls.supported_args:
                wrapper_kwargs[key] = value
            elif key in kbit_params:
                kbit_kwargs[key] = value
            elif key.startswith(("v_head", "summary_")):
                raise TypeError(
                    f"{cls.__name__}.from_pretrained: unknown value-head argument {key!r}; "
                    f"the value head accepts {list(cls.supported_args)}."
                )
            else:
                model_kwargs[key] = value
        return wrapper_kwargs, kbit_kwargs, model_kwargs

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """Load a wrapped model from a hub-style name, a local folder or a model instance.

        Args:
            pretrained_model_name_or_path: a name or path for
                ``transformers_parent_class.from_pretrained``, a folder holding a peft
                adapter, or an already-built model (transformers or peft).
            *model_args: passed on to the transformers ``from_pretrained``.
            **kwargs: ``supported_args`` go to the value head; ``peft_config`` wraps the
                model with peft; ``reward_adapter`` / ``reward_adapter_name`` load a
                reward-modelling adapter; ``is_trainable`` applies to a loaded adapter;
                arguments of peft's ``prepare_model_for_kbit_training`` go there; the
                rest goes to the transformers ``from_pretrained``.
        """
        peft_config = kwargs.pop("peft_config", None)
        reward_adapter = kwargs.pop("reward_adapter", None)
        reward_adapter_name = kwargs.pop("reward_adapter_name", "reward_adapter")
        is_trainable = kwargs.pop("is_trainable", False)
        wrapper_kwargs, kbit_kwargs, model_kwargs = cls._split_kwargs(kwargs)
        token = model_kwargs.get("token")

        if peft_config is not None or reward_adapter is not None:
            require_peft(f"{cls.__name__}.from_pretrained(peft_config=... / reward_adapter=...)")

        source_dir: Path | None = None
        if isinstance(pretrained_model_name_or_path, (str, os.PathLike)):
            path = Path(pretrained_model_name_or_path)
            if path.is_dir():
                source_dir = path
            if source_dir is not None:
                _check_model_folder(source_dir)
            with _naming_folder_on_error(source_dir):
                if source_dir is not None and (source_dir / "adapter_config.json").exists():
                    pretrained_model = cls._load_peft_folder(source_dir, model_args, model_kwargs, is_trainable)
                    if peft_config is not None:
                        raise ValueError(
                            f"{source_dir} already holds a peft adapter; drop peft_config or load the base model instead."
                        )
                else:
                    pretrained_model = cls.transformers_parent_class.from_pretrained(
                        pretrained_model_name_or_path, *model_args, **model_kwargs
                    )
        elif isinstance(pretrained_model_name_or_path, nn.Module):
            if model_kwargs or model_args:
                raise TypeError(
                    f"{cls.__name__}.from_pretrained got a model instance and loading arguments "
                    f"{sorted(model_kwargs)}; loading arguments only apply to a name or path."
                )
            pretrained_model = pretrained_model_name_or_path
        else:
            raise TypeError(
                f"pretrained_model_name_or_path must be a name, a path or a model instance, "
                f"not {type(pretrained_model_name_or_path).__name__}."
            )

        if peft_config is not None:
            pretrained_model = wrap_peft(
                pretrained_model, peft_config, owner=f"{cls.__name__}.from_pretrained", kbit_kwargs=kbit_kwargs
            )

        score_module = None
        if reward_adapter is not None:
            if not is_peft_model(pretrained_model):
                raise ValueError("reward_adapter needs a peft model: pass peft_config too, or load a peft adapter.")
            score_module = cls.add_and_load_reward_modeling_adapter(
                pretrained_model, reward_adapter, reward_adapter_name, token=token
            )

        model = cls(
            pretrained_model,
            score_module=score_module,
            supports_rm_adapter=reward_adapter is not None,
            rm_adapter_name=reward_adapter_name if reward_adapter is not None else None,
            **wrapper_kwargs,
        )
        if source_dir is not None:
            state = load_wrapper_state(source_dir, cls.supported_modules)
            if state:
                try:
                    model.post_init(state)
                except ValueError as err:
                    raise ValueError(f"{source_dir / VALUE_HEAD_FILE}: {err}") from err
            elif cls.supported_modules:
                logger.info("%s has no %s: the value head starts from a fresh initialisation.", source_dir, VALUE_HEAD_FILE)
        return model

    @classmethod
    def _load_peft_folder(cls, folder: Path, model_args, model_kwargs, is_trainable: bool):
        require_peft(f"loading the peft adapter in {folder}")
        from peft import PeftConfig, PeftModel

        adapter_cfg = PeftConfig.from_pretrained(str(folder))
        base = cls.transformers_parent_class.from_pretrained(
            adapter_cfg.base_model_name_or_path, *model_args, **model_kwargs
        )
        return PeftModel.from_pretrained(base, str(folder), is_trainable=is_trainable)

    @classmethod
    def add_and_load_reward_modeling_adapter(
        cls, pretrained_model, adapter_model_id, adapter_name="reward_model_adapter", token=None
    ):
        """Load a reward-modelling peft adapter next to the policy adapter; return its score head.

        ``adapter_model_id`` is a folder (or hub id) saved from a peft
        ``AutoModelForSequenceClassification`` model: its LoRA weights are added
        to ``pretrained_model`` under ``adapter_name`` and its ``score`` layer
        (saved through ``modules_to_save``) becomes an ``nn.Linear`` head.
        """
        folder = Path(str(adapter_model_id))
        if not folder.is_dir():
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(str(adapter_model_id), token=token))
        pretrained_model.load_adapter(str(folder), adapter_name, is_trainable=False)
        pretrained_model.set_adapter("default") if "default" in pretrained_model.peft_config else None

        weights = _read_weight_files(folder, ("adapter_model.safetensors", "adapter_model.bin"))
        score = {k: v for k, v in weights.items() if any(m in k for m in cls.supported_rm_modules)}
        weight = next((v for k, v in score.items() if k.endswith("weight")), None)
        if weight is None:
            raise ValueError(
                f"The reward adapter in {folder} has no score head weights (expected keys containing "
                f"{list(cls.supported_rm_modules)}). Train it as AutoModelForSequenceClassification with "
                "modules_to_save=['score']."
            )
        bias = next((v for k, v in score.items() if k.endswith("bias")), None)
        head = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
        with torch.no_grad():
            head.weight.copy_(weight)
            if bias is not None:
                head.bias.copy_(bias)
        device = next(pretrained_model.parameters()).device
        dtype = next(pretrained_model.parameters()).dtype
        return head.to(device=device, dtype=dtype)

    def post_init(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load the wrapper's own modules from ``state_dict`` (keys like ``v_head.summary.weight``)."""
        for name in self.supported_modules:
            module = getattr(self, name, None)
            if module is None:
                continue
            prefix = f"{name}."
            sub = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
            if not sub:
                continue
            expected = module.state_dict()
            missing = sorted(set(expected) - set(sub))
            if missing:
                raise ValueError(f"The saved {name} is incomplete: missing {missing}. The checkpoint may be corrupt.")
            for key, tensor in sub.items():
                if key in expected and tuple(tensor.shape) != tuple(expected[key].shape):
                    raise ValueError(
                        f"The saved {name}.{key} has shape {tuple(tensor.shape)}, but this model expects "
                        f"{tuple(expected[key].shape)}: the checkpoint belongs to a different model or is corrupt."
                    )
            module.load_state_dict(sub, strict=True)

    # ------------------------------------------------------------------ saving
    def state_dict(self, *args, **kwargs):
        """The wrapped model's state dict plus the wrapper's modules under their own prefix."""
        state = self.pretrained_model.state_dict(*args, **kwargs)
        for name in self.supported_modules:
            module = getattr(self, name, None)
            if module is not None:
                for key, value in module.state_dict().items():
                    state[f"{name}.{key}"] = value
        return state

    def wrapper_state_dict(self) -> dict[str, torch.Tensor]:
        """Only the wrapper's own modules (what `save_pretrained` writes to value_head.safetensors)."""
        state = {}
        for name in self.supported_modules:
            module = getattr(self, name, None)
            if module is not None:
                for key, value in module.state_dict().items():
                    state[f"{name}.{key}"] = value.detach().contiguous().cpu()
        return state

    def save_pretrained(self, *args, **kwargs):
        """Save the wrapped model with its own ``save_pretrained`` and the value head beside it.

        Arguments go to the wrapped model's ``save_pretrained`` (a peft model
        saves its adapter). The value head lands in ``value_head.safetensors``.
        The save is atomic: everything is written to a hidden sibling folder that
        replaces ``save_directory`` only once complete, so a kill mid-save leaves the
        previous contents. Files already in ``save_directory`` that this save does not
        produce (a tokenizer, a README) are kept; old weight files are not. A folder with
        subfolders (not a plain model folder) gets each new file moved in atomically instead.
        """
        args = list(args)
        if "save_directory" in kwargs:
            save_directory = kwargs.pop("save_directory")
        elif args:
            save_directory = args.pop(0)
        else:
            raise TypeError("save_pretrained needs a save_directory.")
        state_dict = kwargs.pop("state_dict", None)
        if state_dict is not None:
            # A full state dict (as state_dict() returns): split off the wrapper's part.
            prefixes = tuple(f"{n}." for n in self.supported_modules)
            kwargs["state_dict"] = {k: v for k, v in state_dict.items() if not k.startswith(prefixes)}
        is_main = kwargs.get("is_main_process", True)
        if not is_main or kwargs.get("push_to_hub"):
            # Other processes write nothing of ours; pushing derives the repo name from the folder name.
            out = self.pretrained_model.save_pretrained(save_directory, *args, **kwargs)
            if is_main and self.wrapper_state_dict():
                _save_wrapper_file(self.wrapper_state_dict(), Path(save_directory) / VALUE_HEAD_FILE)
            return out

        from ..utils.checkpoint import atomic_directory

        def write(folder: Path):
            result = self.pretrained_model.save_pretrained(str(folder), *args, **kwargs)
            wrapper_state = self.wrapper_state_dict()
            if wrapper_state:
                _save_wrapper_file(wrapper_state, folder / VALUE_HEAD_FILE)
            return result

        target = Path(save_directory).resolve()
        if not target.exists() or not any(p.is_dir() for p in target.iterdir()):  # a plain model folder: swap it whole
            with atomic_directory(target, marker=False) as tmp:
                out = write(tmp)
                _carry_over_other_files(target, tmp)
            return out
        import tempfile

        tmp = Path(tempfile.mkdtemp(prefix=".rlft-save-", dir=target))
        try:
            out = write(tmp)
            _move_files_into(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return out

    def push_to_hub(self, *args, **kwargs):
        """Push the wrapped model (and the value head file) to the Hub; fails clearly when offline."""
        if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
            raise RuntimeError(
                "push_to_hub needs network access to the Hugging Face Hub, but HF_HUB_OFFLINE is set. "
                "Save locally with save_pretrained(folder) and upload the folder later."
            )
        try:
            return self.pretrained_model.push_to_hub(*args, **kwargs)
        except OSError as err:  # requests' connection errors derive from OSError
            raise RuntimeError(
                f"push_to_hub could not reach the Hub ({err}). Save locally with save_pretrained(folder) instead."
            ) from err

    # ------------------------------------------------------------------ reward adapter
    def compute_reward_score(self, input_ids, attention_mask=None, **kwargs):
        """Reward-head scores (B, T, num_labels) from the reward adapter; the policy adapter is restored after."""
        if not self.supports_rm_adapter:
            raise ValueError("This model has no reward adapter: load it with from_pretrained(..., reward_adapter=...).")
        self.pretrained_model.set_adapter(self.rm_adapter_name)
        was_training = self.pretrained_model.training
        self.pretrained_model.eval()
        try:
            with torch.no_grad():
                out = self.pretrained_model(
                    input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, return_dict=True, **kwargs
                )
                hidden = out.hidden_states[-1]  # (B, T, H)
                scores = self.score(hidden.to(self.score.weight.dtype)).float()  # (B, T, num_labels)
        finally:
            self.pretrained_model.set_adapter(self.policy_adapter_name)
            self.pretrained_model.train(was_training)
        return scores

    # ------------------------------------------------------------------ conveniences
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def current_device(self) -> torch.device:
        """The device of the wrapped model's parameters (TRL's PEFT docs pass ``ppo_trainer.model.current_device``
        as ``device`` of a reward pipeline)."""
        return self.device

    def _get_current_device(self):
        return self.device


# ---------------------------------------------------------------------- checkpoint files
#: Files a save of a (wrapped) model writes or may have written before; never carried over from an older save.
_MODEL_FILE_PREFIXES = ("model", "pytorch_model", "adapter_model", "adapter_config", "config", "generation_config",
                        "value_head", "tf_model", "flax_model")


def _carry_over_other_files(old: Path, new: Path) -> None:
    """Copy into ``new`` the files of ``old`` that a model save does not own (tokenizer, README, notes)."""
    if not old.is_dir():
        return
    for path in old.rglob("*"):
        rel = path.relative_to(old)
        if not path.is_file() or (new / rel).exists() or rel.parts[0].startswith(_MODEL_FILE_PREFIXES):
            continue
        (new / rel).parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, new / rel)  # same filesystem: no copy, and the old folder is deleted after the swap
        except OSError:
            shutil.copy2(path, new / rel)


def _move_files_into(new: Path, target: Path) -> None:
    """Move every file of ``new`` into ``target`` (each move atomic) and delete weight files of an older save."""
    import re

    moved = set()
    for path in sorted(new.rglob("*")):
        if path.is_file():
            rel = path.relative_to(new)
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target / rel)
            moved.add(rel.as_posix())
    weight = re.compile(r"^(model|pytorch_model|adapter_model)(-\d+-of-\d+)?\.(safetensors|bin)(\.index\.json)?$")
    for path in target.iterdir():
        if path.is_file() and weight.match(path.name) and path.name not in moved:
            path.unlink()  # a shard or index of an older save that would confuse loading


def _check_model_folder(folder: Path) -> None:
    """A local folder must hold a model or adapter config; say which file is missing and what is there."""
    if (folder / "config.json").is_file() or (folder / "adapter_config.json").is_file():
        return
    present = sorted(p.name for p in folder.iterdir())[:20]
    raise FileNotFoundError(
        f"{folder} has no config.json (nor adapter_config.json), so it is not a saved model folder; "
        f"it holds {present}. Save with save_pretrained, or pass the folder that has config.json."
    )


#: Loading arguments of transformers 4 that transformers 5 no longer takes, and what replaces them.
_REMOVED_LOADING_ARGS = {
    "load_in_8bit": "quantization_config=transformers.BitsAndBytesConfig(load_in_8bit=True)",
    "load_in_4bit": "quantization_config=transformers.BitsAndBytesConfig(load_in_4bit=True)",
    "use_auth_token": "token=...",
}
#: Messages of RuntimeErrors that come from the bytes of a weight file, not from the arguments.
_FILE_RUNTIME_ERRORS = ("size mismatch", "PytorchStreamReader", "unexpected EOF", "invalid load key")


def _is_file_error(err: BaseException) -> bool:
    """Whether ``err`` comes from a missing, damaged or mismatched file rather than from the call's arguments."""
    import pickle

    if isinstance(err, (OSError, EOFError, json.JSONDecodeError, pickle.UnpicklingError)):
        return True
    if type(err).__name__ == "SafetensorError":
        return True
    return isinstance(err, RuntimeError) and any(text in str(err) for text in _FILE_RUNTIME_ERRORS)


class _naming_folder_on_error:
    """Re-raise file errors from loading a local folder (e.g. safetensors' header errors) as "damaged", with the folder.

    Other errors (a transformers 4 argument such as ``load_in_8bit``, a ``device_map`` this machine
    cannot serve) are about the call, not the files: they keep their type and message; a removed
    argument's message also says what replaces it.
    """

    def __init__(self, folder: Path | None):
        self.folder = folder

    def __enter__(self):
        return self

    def __exit__(self, exc_type, err, tb):
        if err is None or not isinstance(err, Exception):
            return False
        if isinstance(err, TypeError):
            removed = [name for name in _REMOVED_LOADING_ARGS if f"argument '{name}'" in str(err)]
            if removed:
                fixes = "; ".join(f"{name} -> {_REMOVED_LOADING_ARGS[name]}" for name in removed)
                raise TypeError(f"{err}. transformers 5 removed this loading argument; use instead: {fixes}.") from err
            return False
        if self.folder is None or not _is_file_error(err) or str(self.folder) in str(err):
            return False
        files = sorted(p.name for p in self.folder.iterdir())[:20]
        raise ValueError(
            f"Could not load the model in {self.folder} (files: {files}): {type(err).__name__}: {err}. "
            "A weight file is probably damaged or incomplete (an interrupted save or download); save or copy it again."
        ) from err


def _read_weight_files(folder: Path, names) -> dict[str, torch.Tensor]:
    for name in names:
        path = folder / name
        if not path.exists():
            continue
        return _load_tensors(path)
    return {}


def _tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes: safetensors itself has no checksum, so flipped bits load silently."""
    import hashlib

    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _save_wrapper_file(tensors: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata={"format": "pt", "writer": "rlft", "sha256": _tensor_digest(tensors)})


def _load_tensors(path: Path, keys_with: str | None = None) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            out = {}
            with safe_open(str(path), framework="pt") as f:
                digest = (f.metadata() or {}).get("sha256")
                for key in f.keys():
                    if keys_with is None or key.startswith(keys_with):
                        out[key] = f.get_tensor(key)
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
            return {k: v for k, v in state.items() if keys_with is None or k.startswith(keys_with)}
    except Exception as err:  # safetensors/pickle raise many types for a damaged file
        raise ValueError(f"Could not read {path}: the file is damaged or not a weight file ({err}).") from err
    if digest is not None and keys_with is None and _tensor_digest(out) != digest:
        raise ValueError(f"{path} is corrupt: its tensors do not match the checksum written with them. Save it again.")
    return out


def load_wrapper_state(folder: Path, modules: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Find the wrapper's tensors in ``folder``: rlft's file first, then TRL 0.7 layouts."""
    folder = Path(folder)
    own = folder / VALUE_HEAD_FILE
    if own.exists():
        return _load_tensors(own)
    state: dict[str, torch.Tensor] = {}
    for module in modules:
        prefix = f"{module}."
        for index_name in LEGACY_INDEX_FILES:
            index_path = folder / index_name
            if index_path.exists():
                weight_map = json.loads(index_path.read_text())["weight_map"]
                for shard in sorted({f for k, f in weight_map.items() if k.startswith(prefix)}):
                    state.update(_load_tensors(folder / shard, prefix))
                break
        else:
            for name in LEGACY_WEIGHT_FILES:
                if (folder / name).exists():
                    state.update(_load_tensors(folder / name, prefix))
                    break
    return state


# ---------------------------------------------------------------------- reference model
def _find_layer_prefix(param_names: list[str], num_shared_layers: int, pattern: str | None) -> tuple[str, str]:
    patterns = (pattern,) if pattern is not None else LAYER_PATTERNS
    for pat in patterns:
        if "{layer}" not in pat:
            raise ValueError(f"pattern must contain '{{layer}}' where the block index goes, e.g. 'transformer.h.{{layer}}'; got {pat!r}.")
        first = pat.format(layer=0) + "."
        if any(first in n for n in param_names):
            return pat, pat.format(layer=num_shared_layers) + "."
    raise ValueError(
        "create_reference_model could not find the transformer blocks of this architecture; pass "
        f"pattern='<module path>.{{layer}}' (known patterns: {list(LAYER_PATTERNS)})."
    )


def create_reference_model(model, num_shared_layers: int | None = None, pattern: str | None = None):
    """A frozen ``.eval()`` copy of ``model`` for the KL penalty.

    Args:
        model: the model being trained (a `PreTrainedModelWrapper` or any nn.Module).
        num_shared_layers: share this many initial blocks (and everything before them,
            such as the embeddings) with ``model``: the reference then holds the very
            same parameter objects, frozen in both models, and stores no copy of them.
            ``None`` copies everything.
        pattern: where the blocks live, with ``{layer}`` for the index (e.g.
            ``"transformer.h.{layer}"``); found automatically for common architectures.

    Returns:
        The reference model, in eval mode, with ``requires_grad=False`` everywhere.
    """
    named = list(model.named_parameters())
    names = [n for n, _ in named]
    shared: set[str] = set()
    if num_shared_layers is not None:
        if not isinstance(num_shared_layers, int) or isinstance(num_shared_layers, bool) or num_shared_layers < 0:
            raise ValueError(f"num_shared_layers must be a non-negative integer, got {num_shared_layers!r}.")
        pat, boundary = _find_layer_prefix(names, num_shared_layers, pattern)
        n_layers = len({n.split(pat.format(layer=""))[1].split(".")[0] for n in names if pat.format(layer="") in n})
        if num_shared_layers >= n_layers:
            raise ValueError(
                f"num_shared_layers={num_shared_layers} but the model has {n_layers} blocks; share at most "
                f"{n_layers - 1} (use num_shared_layers=None for a full frozen copy)."
            )
        for name in names:
            if boundary in name:
                break
            shared.add(name)
    params = dict(named)
    # Pre-seed deepcopy's memo so shared parameters are never copied (no peak from a full copy).
    memo = {id(params[n]): params[n] for n in shared}
    ref = copy.deepcopy(model, memo)
    for name in shared:
        params[name].requires_grad_(False)
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref.eval()
