"""Which optional packages are installed, without importing them.

Each helper answers from the import system's metadata, so asking is cheap and
never fails; `require` turns a missing optional package into an error that
names the pip extra to install.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache

import torch


@lru_cache(maxsize=None)
def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def is_peft_available() -> bool:
    return _has("peft")


def is_diffusers_available() -> bool:
    return _has("diffusers")


def is_wandb_available() -> bool:
    return _has("wandb")


def is_tensorboard_available() -> bool:
    return _has("tensorboard") or _has("tensorboardX")


def is_bitsandbytes_available() -> bool:
    return _has("bitsandbytes")


def is_deepspeed_available() -> bool:
    return _has("deepspeed")


def is_unsloth_available() -> bool:
    return _has("unsloth")


def is_torchvision_available() -> bool:
    return _has("torchvision")


def is_rich_available() -> bool:
    return _has("rich")


def is_matplotlib_available() -> bool:
    return _has("matplotlib")


def is_xpu_available() -> bool:
    return hasattr(torch, "xpu") and torch.xpu.is_available()


def is_npu_available() -> bool:
    return _has("torch_npu") and hasattr(torch, "npu") and torch.npu.is_available()


def is_torch_greater_2_0() -> bool:
    return tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 0)


def is_accelerate_greater_20_0() -> bool:
    """True when the installed accelerate is 0.20.0 or newer (TRL 0.7's name, kept for compatibility)."""
    from packaging.version import Version

    installed = _version("accelerate")
    return installed is not None and Version(installed) >= Version("0.20.0")


def is_transformers_greater_than(version: str) -> bool:
    from packaging.version import Version

    installed = _version("transformers")
    return installed is not None and Version(installed) > Version(version)


#: pip extra of rlft that installs each optional package.
EXTRAS = {
    "peft": "peft",
    "diffusers": "diffusers",
    "wandb": "wandb",
    "tensorboard": "tensorboard",
    "matplotlib": "plots",
}


def require(module: str, feature: str) -> None:
    """Raise ImportError naming the extra to install when ``module`` is missing."""
    if _has(module):
        return
    extra = EXTRAS.get(module)
    how = f'pip install "rlft[{extra}]"' if extra else f"pip install {module}"
    raise ImportError(f"{feature} needs the optional package '{module}', which is not installed. Install it with: {how}")
