"""Load a script that is not part of the package (benchmarks/*.py, examples/*.py) as a module, for tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def load_script(relative_path: str, name: str) -> ModuleType:
    """Execute ``ROOT / relative_path`` as module ``name``, registered in ``sys.modules`` (dataclasses
    look their module up there while the script runs); the caller may remove it afterwards."""
    spec = importlib.util.spec_from_file_location(name, ROOT / relative_path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module
