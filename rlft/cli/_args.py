"""Command-line parsing: `transformers.HfArgumentParser` over each command's dataclasses.

Every option comes from a dataclass field; its help is the field's metadata help or,
for rlft's configs, the docstring written under the field. Values are layered, each
over the one before:

    1. the dataclass defaults
    2. the command's defaults for command-line runs (``CLI_DEFAULTS``: e.g. log every 10 steps)
    3. ``--tiny``: the command's small smoke-run preset (``TINY_PRESET``)
    4. ``--resume``: the run directory's saved ``config.yaml``
    5. ``--config file.yaml|json``
    6. flags given on the command line
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import datetime as _dt
import difflib
import inspect
import json
import os
import textwrap
import typing
from pathlib import Path
from typing import Any, Sequence

from ..reporting.run_dir import CONFIG_FILE

#: Where runs go when no --output_dir is given: runs/<command>-<date>-<time>.
DEFAULT_RUNS_FOLDER = "runs"


class CLIError(Exception):
    """A mistake in the command line or its inputs: printed as ``rlft <cmd>: error: ...`` without a traceback."""


def field_docstrings(cls: type) -> dict[str, str]:
    """The string literal written under each field of ``cls`` and its dataclass bases (nearest class wins)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, following in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
            ):
                docs[node.target.id] = " ".join(following.value.value.split())
    return docs


def _json_value(text: str) -> Any:
    """Parse a dict-valued option written as JSON on the command line."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"expected a JSON object such as '{{\"key\": 1}}', got {text!r} ({err.msg})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def _is_str_or_bool(hint) -> bool:
    """A ``str | bool`` field (e.g. TrainingArguments.include_num_input_tokens_seen), which HfArgumentParser reads as bool."""
    args = set(typing.get_args(hint))
    return str in args and bool in args


def _str_or_bool_value(text: str):
    """true/false spellings as bools, any other text as itself (so saved values like "all" load back)."""
    from transformers.hf_argparser import string_to_bool

    try:
        return string_to_bool(text)
    except argparse.ArgumentTypeError:
        return text


def build_parser(command: str, dataclass_types: Sequence[type], description: str):
    """An HfArgumentParser for ``rlft <command>`` with help on every option and ``--config``."""
    from transformers import HfArgumentParser

    parser = HfArgumentParser(
        list(dataclass_types), prog=f"rlft {command}", description=description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False,
    )
    docs: dict[str, str] = {}
    str_or_bool = set()
    for dtype in dataclass_types:
        docs.update(field_docstrings(dtype))
        # From the annotations: HfArgumentParser overwrites Field.type with the type it settled on.
        hints = typing.get_type_hints(dtype)
        str_or_bool.update(f.name for f in dataclasses.fields(dtype) if _is_str_or_bool(hints.get(f.name)))
    for action in parser._actions:
        if action.dest in str_or_bool and action.option_strings and not action.option_strings[0].startswith("--no_"):
            action.type = _str_or_bool_value
        if action.dest in docs and not action.help:
            help_text = docs[action.dest]
            if action.option_strings and action.option_strings[0].startswith("--no_"):
                help_text = f"Turn off --{action.dest}: {help_text}"
            action.help = help_text.replace("%", "%%")
        if action.type is dict:
            action.type = _json_value
            action.metavar = "JSON"
    parser.add_argument(
        "--config", metavar="FILE", default=None,
        help="A YAML or JSON file of option values (keys as the option names); flags given on the command line win.",
    )
    return parser


def load_config_file(path: str | os.PathLike) -> dict:
    """The option values in a YAML (.yaml/.yml) or JSON (.json) file: a flat mapping of option name to value."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise CLIError(f"--config {path}: no such file.")
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise CLIError(f"--config {path}: not valid {'JSON' if path.suffix.lower() == '.json' else 'YAML'}: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise CLIError(f"--config {path}: expected a mapping of option names to values, got {type(data).__name__}.")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def _check_keys(values: dict, known: set[str], source: str) -> None:
    unknown = [k for k in values if k not in known]
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise CLIError(f"{source}: unknown option(s) {', '.join(hints)}. See --help for the accepted names.")


def parse_command(
    command: str,
    dataclass_types: Sequence[type],
    argv: Sequence[str],
    description: str = "",
    cli_defaults: dict | None = None,
    tiny_preset: dict | None = None,
) -> tuple:
    """Parse ``argv`` for ``rlft <command>`` into one instance per dataclass, layering the value sources.

    The flags ``--tiny``, ``--resume`` and ``--output_dir`` must be fields of one of the
    dataclasses. Raises SystemExit (via argparse) on bad flags, CLIError on a bad config file.
    """
    parser = build_parser(command, dataclass_types, description)
    known = {a.dest for a in parser._actions if a.dest not in ("help", "config")}
    argv = list(argv)

    # Pass 1: only to learn which layers apply (no dataclass is built, so nothing is validated yet).
    first, _ = parser.parse_known_args(argv)
    layers: dict[str, Any] = {}
    layers.update({k: v for k, v in (cli_defaults or {}).items() if k in known})
    if getattr(first, "tiny", False):
        layers.update(tiny_preset or {})
    file_values: dict[str, Any] = {}
    if first.config:
        file_values = load_config_file(first.config)
        _check_keys(file_values, known, f"--config {first.config}")
    if getattr(first, "resume", False) or file_values.get("resume"):
        run_dir = getattr(first, "output_dir", None) or file_values.get("output_dir")
        if not run_dir:
            raise CLIError("--resume needs --output_dir: the run directory to continue.")
        saved = Path(run_dir) / CONFIG_FILE
        if not saved.is_file():
            raise CLIError(f"--resume: {run_dir} holds no {CONFIG_FILE}; it is not a run directory of rlft {command}.")
        saved_values = load_config_file(saved)
        _check_keys(saved_values, known, str(saved))
        layers.update(saved_values)
    layers.update(file_values)
    if "output_dir" in known and not (getattr(first, "output_dir", None) or layers.get("output_dir")):
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        layers["output_dir"] = os.path.join(DEFAULT_RUNS_FOLDER, f"{command}-{stamp}")
    parser.set_defaults(**layers)

    # Pass 2: the real parse; __post_init__ checks run here and their errors name the option.
    try:
        parsed = parser.parse_args_into_dataclasses(argv, look_for_args_file=False)
    except (ValueError, TypeError, ImportError) as err:
        parser.error(str(err))
    return tuple(obj for obj in parsed if dataclasses.is_dataclass(obj))


def merged_config(*objs: Any) -> dict:
    """The ``__init__`` fields of several dataclasses in one flat dict (what config.yaml holds)."""
    out: dict[str, Any] = {}
    for obj in objs:
        for f in dataclasses.fields(obj):
            if f.init:
                out[f.name] = getattr(obj, f.name)
    return out


# ---------------------------------------------------------------------- trainer keyword arguments as options
#: Parameter types that make sense as command-line options (after dropping None from an Optional).
_OPTION_TYPES = (str, int, float, bool, dict)


def _param_docs(doc: str) -> dict[str, str]:
    """``name: text`` entries of an Args/Parameters docstring block (continuation lines joined)."""
    import re

    docs: dict[str, str] = {}
    current: list[str] = []
    indent = None
    for line in (doc or "").splitlines():
        match = re.match(r"^(\s*)([a-z_]\w*(?:,\s*[a-z_]\w*)*):\s+(\S.*)$", line)
        if match and (indent is None or len(match.group(1)) <= indent):
            indent = len(match.group(1))
            current = [n.strip() for n in match.group(2).split(",")]
            for name in current:
                docs[name] = match.group(3).strip()
        elif current and line.strip() and indent is not None and len(line) - len(line.lstrip()) > indent:
            for name in current:
                docs[name] += " " + line.strip()
        else:
            current = []
    return docs


def _option_type(hint):
    """The type of an option for ``hint``, or None when a parameter cannot come from the command line."""
    import types

    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        return hint
    if origin in (typing.Union, getattr(types, "UnionType", ())):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1 and _option_type(args[0]) is not None:
            return typing.Optional[args[0]]
        return None
    return hint if hint in _OPTION_TYPES else None


def options_from_signature(name: str, fn, exclude: Sequence[str] = (), doc: str | None = None) -> type:
    """A dataclass with one field per keyword argument of ``fn`` that a command line can give.

    Keeps parameters whose annotation is str/int/float/bool/dict (optionally None) or a Literal,
    with the same defaults; help comes from the ``name: text`` lines of ``doc`` (default: the
    docstring of ``fn``'s class). The command then passes the fields on as keyword arguments.
    """
    hints = typing.get_type_hints(fn)
    docs = _param_docs(doc if doc is not None else (fn.__doc__ or ""))
    fields = []
    for param in inspect.signature(fn).parameters.values():
        if param.name in exclude or param.name == "self" or param.default is inspect.Parameter.empty:
            continue
        option_type = _option_type(hints.get(param.name))
        if option_type is None:
            continue
        metadata = {"help": docs[param.name]} if param.name in docs else {}
        fields.append((param.name, option_type, dataclasses.field(default=param.default, metadata=metadata)))
    return dataclasses.make_dataclass(name, fields)
