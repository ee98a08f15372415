"""`RunDir`: the folder one training run writes (config, metrics, samples, model card).

Layout (see docs/cli.md)::

    config.yaml        the configuration used (every field, reloadable with --config)
    metrics.jsonl      one JSON object per logged step: {"step": n, "<name>": value, ...}
    model/             the trained model (with value_head.safetensors for PPO)
    README.md          the model card
    samples/*.jsonl    sample generations (before / after training, best-of-n candidates, ...)
    plots/*.png        curves drawn from metrics.jsonl
    report.md, report.html
    checkpoints/       what ``--resume`` continues from
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import enum
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any, Iterable

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.yaml"
MODEL_CARD_FILE = "README.md"
#: Files whose presence marks a folder as a run directory; ``overwrite=True`` only
#: empties folders that hold one of them, so a mistyped path never loses unrelated files.
RUN_MARKERS = (CONFIG_FILE, METRICS_FILE)


class RunDir:
    """A run directory: creates the folder and writes the run's files into it.

    Args:
        path: the folder. Created (with parents) when missing.
        resume: continue a run in an existing folder (files are appended to / replaced).
        overwrite: empty an existing run directory first (only one holding ``config.yaml``
            or ``metrics.jsonl``; any other non-empty folder is refused).

    A non-empty folder is refused unless ``resume`` or ``overwrite`` is set.
    """

    def __init__(self, path: str | os.PathLike, resume: bool = False, overwrite: bool = False):
        if resume and overwrite:
            raise ValueError("RunDir: resume=True and overwrite=True contradict each other; choose one.")
        self.path = Path(path).expanduser()
        if self.path.exists() and not self.path.is_dir():
            raise NotADirectoryError(f"RunDir: {self.path} exists and is a file, not a folder; choose another output path.")
        if self.path.is_dir() and any(self.path.iterdir()) and not resume:
            if not overwrite:
                raise FileExistsError(
                    f"Run directory {self.path} already exists and is not empty. Pass --resume to continue that run, "
                    "--overwrite to replace it, or choose another --output_dir."
                )
            if not any((self.path / marker).exists() for marker in RUN_MARKERS):
                raise FileExistsError(
                    f"Refusing to overwrite {self.path}: it is not empty and does not look like a run directory "
                    f"(no {' or '.join(RUN_MARKERS)}). Remove it yourself or choose another --output_dir."
                )
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.resumed = resume

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    # ------------------------------------------------------------------ folders
    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def model_dir(self) -> Path:
        return self.path / "model"

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def samples_dir(self) -> Path:
        return self.path / "samples"

    @property
    def plots_dir(self) -> Path:
        return self.path / "plots"

    # ------------------------------------------------------------------ config
    def save_config(self, obj: Any, name: str = CONFIG_FILE, header: str | None = None) -> Path:
        """Write ``obj`` (a dataclass or a dict) as YAML to ``name``; returns the file.

        Dataclasses contribute their ``__init__`` fields, so the file loads back into the
        same class. Values YAML cannot hold (enums, paths, objects) are written as text.
        ``header`` is written as a comment block at the top.
        """
        import yaml

        data = config_to_dict(obj)
        out = self.path / name
        text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=False)
        if header:
            text = "".join(f"# {line}\n" for line in header.splitlines()) + text
        _atomic_write_text(out, text)
        return out

    def load_config(self, name: str = CONFIG_FILE) -> dict:
        """The dict saved by `save_config` (empty when the file is missing)."""
        import yaml

        path = self.path / name
        if not path.exists():
            return {}
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        return data or {}

    # ------------------------------------------------------------------ metrics
    def log_metrics(self, step: int, metrics: dict) -> dict:
        """Append one line ``{"step": step, **metrics}`` to metrics.jsonl and flush it; returns the row.

        Tensors and NumPy scalars become floats (one-element arrays too); arrays with more than
        one element, and values that are neither numbers, booleans nor strings, are skipped;
        NaN and infinities are written as null.
        """
        row: dict[str, Any] = {"step": int(step)}
        for key, value in metrics.items():
            if key == "step":
                continue
            clean = to_jsonable_scalar(value)
            if clean is not _SKIP:
                row[str(key)] = clean
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row, allow_nan=False) + "\n")
            f.flush()
        return row

    def read_metrics(self) -> list[dict]:
        """All rows of metrics.jsonl, in order. A last line cut short by a crash is ignored."""
        if not self.metrics_path.exists():
            return []
        rows = []
        lines = self.metrics_path.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                if i == len(lines) - 1:
                    break  # the process died while writing its last line
                raise ValueError(f"{self.metrics_path}: line {i + 1} is not JSON: {line[:80]!r}") from None
        return rows

    def truncate_metrics(self, last_step: int) -> int:
        """Drop the rows logged after ``last_step`` (when resuming from an earlier checkpoint); returns how many."""
        rows = self.read_metrics()
        keep = [r for r in rows if r.get("step", 0) <= last_step]
        if len(keep) != len(rows) or (self.metrics_path.exists() and not self.metrics_path.read_text(encoding="utf-8").endswith("\n")):
            _atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in keep))
        return len(rows) - len(keep)

    # ------------------------------------------------------------------ samples
    def save_samples(self, name: str, rows: Iterable[dict]) -> Path:
        """Write ``rows`` to samples/<name>.jsonl (replacing it); returns the file."""
        path = self._samples_file(name)
        _atomic_write_text(path, "".join(json.dumps(_jsonable_row(r), ensure_ascii=False) + "\n" for r in rows))
        return path

    def append_samples(self, name: str, rows: Iterable[dict]) -> Path:
        """Append ``rows`` to samples/<name>.jsonl; returns the file."""
        path = self._samples_file(name)
        with open(path, "a", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(_jsonable_row(r), ensure_ascii=False) + "\n")
            f.flush()
        return path

    def read_samples(self, name: str) -> list[dict]:
        """The rows of samples/<name>.jsonl (empty when missing)."""
        path = self._samples_file(name, create=False)
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def _samples_file(self, name: str, create: bool = True) -> Path:
        if not name or "/" in name or "\\" in name or name.startswith("."):
            raise ValueError(f"sample set name must be a plain file name without folders, got {name!r}.")
        if create:
            self.samples_dir.mkdir(parents=True, exist_ok=True)
        return self.samples_dir / (name if name.endswith(".jsonl") else f"{name}.jsonl")

    # ------------------------------------------------------------------ model card
    def write_model_card(self, title: str, body_markdown: str, tags: Iterable[str] = ()) -> Path:
        """Write README.md: a Hub-style YAML front matter (library rlft, ``tags`` each once), ``# title`` and the body.

        The same card replaces any README.md in ``model/`` (peft writes a template full of
        "[More Information Needed]" there), so the folder that is shared says what it holds.
        """
        tag_lines = "".join(f"- {t}\n" for t in dict.fromkeys(["rlft", *tags]))
        created = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
        text = (
            f"---\nlibrary_name: rlft\ntags:\n{tag_lines}---\n\n# {title}\n\n"
            f"{body_markdown.strip()}\n\n<sub>Written by rlft on {created}.</sub>\n"
        )
        path = self.path / MODEL_CARD_FILE
        _atomic_write_text(path, text)
        if self.model_dir.is_dir():
            _atomic_write_text(self.model_dir / MODEL_CARD_FILE, text)
        return path


# ---------------------------------------------------------------------- conversion helpers
class _Skip:
    def __repr__(self) -> str:
        return "<skip>"


_SKIP = _Skip()


def to_jsonable_scalar(value: Any) -> Any:
    """A JSON scalar for a metric value, or ``_SKIP``. Non-finite floats become None."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "detach") and hasattr(value, "numel"):  # torch.Tensor, without importing torch
        if value.numel() != 1:
            return _SKIP
        value = value.detach().cpu().reshape(()).item()
        return to_jsonable_scalar(value)
    if hasattr(value, "dtype") and hasattr(value, "size") and hasattr(value, "item"):  # NumPy array or scalar
        if value.size != 1:
            return _SKIP
        return to_jsonable_scalar(value.reshape(()).item() if hasattr(value, "reshape") else value.item())
    return _SKIP


def _jsonable_row(row: dict) -> dict:
    out = {}
    for key, value in row.items():
        if isinstance(value, (list, tuple)):
            out[key] = [_plain(v) for v in value]
        else:
            out[key] = _plain(value)
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return _jsonable_row(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    scalar = to_jsonable_scalar(value)
    if scalar is not _SKIP:
        return scalar
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return str(value)


def config_to_dict(obj: Any) -> dict:
    """A YAML-safe dict of a dataclass's ``__init__`` fields, or of a dict."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        data = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if f.init}
    elif isinstance(obj, dict):
        data = dict(obj)
    else:
        raise TypeError(f"save_config takes a dataclass instance or a dict, got {type(obj).__name__}.")
    return {str(k): _yaml_value(v) for k, v in data.items()}


def _yaml_value(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return _yaml_value(value.value)
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {str(k): _yaml_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_yaml_value(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return config_to_dict(value)
    scalar = to_jsonable_scalar(value)
    if scalar is not _SKIP:
        return scalar
    return str(value)


def _atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary file and rename, so an interrupted run never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
