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
import re
import textwrap
import typing
from pathlib import Path
from typing import Any, Sequence

from ..reporting.run_dir import CONFIG_FILE

#: Where runs go when no --output_dir is given: runs/<command>-<date>-<time>.
DEFAULT_RUNS_FOLDER = "runs"


class CLIError(Exception):
    """A mistake in the command line or its inputs: printed as ``rlft <cmd>: error: ...`` without a traceback."""


#: Config fields that are derived or set by the trainer itself, so they are not options (a saved
#: config.yaml that still lists them loads: the values are recomputed).
INTERNAL_FIELDS = frozenset({
    "world_size", "is_peft_model", "is_encoder_decoder",
    "backward_batch_size", "global_backward_batch_size", "global_batch_size",
})
#: PPOConfig's tracking fields, filled from the command's own options: field -> the option to use instead.
FILLED_FIELDS = {"reward_model": "--reward", "model_name": "--model_name_or_path", "query_dataset": "--dataset"}

#: Value checks made before any run directory exists: option -> (test, what the value must be).
#: (Checks that belong to one config live in its __post_init__; these are the ones the trainers
#: would otherwise only hit deep inside torch, after the run directory was written.)
_POSITIVE_INT = (lambda v: v >= 1, "a positive integer")
VALUE_CHECKS: dict[str, tuple] = {
    "learning_rate": (lambda v: v >= 0, ">= 0 (typical values: 1e-6 to 1e-3)"),
    "per_device_train_batch_size": _POSITIVE_INT,
    "per_device_eval_batch_size": _POSITIVE_INT,
    "gradient_accumulation_steps": _POSITIVE_INT,
    "steps": _POSITIVE_INT,
    "max_steps": (lambda v: v == -1 or v >= 1, "a positive number of steps, or -1 (train for --num_train_epochs)"),
    "num_train_epochs": (lambda v: v > 0, "> 0"),
    "max_new_tokens": _POSITIVE_INT,
    "sample_max_new_tokens": _POSITIVE_INT,
    "num_samples": (lambda v: v >= 0, ">= 0"),
    "reward_batch_size": _POSITIVE_INT,
    "generation_batch_size": _POSITIVE_INT,
    "temperature": (lambda v: v > 0, "> 0"),
    "eval_fraction": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "max_prompts": (lambda v: v is None or v >= 1, "a positive integer"),
    "max_train_samples": (lambda v: v is None or v >= 1, "a positive integer"),
    "batch_size": _POSITIVE_INT,
    "mini_batch_size": _POSITIVE_INT,
    "ppo_epochs": _POSITIVE_INT,
    "max_ppo_steps": _POSITIVE_INT,
    "ppo_minutes": (lambda v: v > 0, "> 0 minutes"),
    "heldout_prompts": _POSITIVE_INT,
    "rm_train_pairs": _POSITIVE_INT,
    "eval_samples_per_prompt": _POSITIVE_INT,
    "bon_n": _POSITIVE_INT,
    "lora_r": _POSITIVE_INT,
    "lora_alpha": (lambda v: v > 0, "> 0"),
    "lora_dropout": (lambda v: 0 <= v < 1, "in [0, 1)"),
}

#: A number, possibly negative or in scientific notation (argparse takes "-1e-3" for an option).
_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


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


def _parser_class():
    from transformers import HfArgumentParser

    class CommandParser(HfArgumentParser):
        """Usage errors become `CLIError` (one line, printed without the usage block)."""

        def error(self, message):
            raise CLIError(message)

    return CommandParser


#: Options listed first in ``--help`` (those a first run sets), in this order, when the command has them.
COMMON_OPTIONS = (
    "model_name_or_path", "dataset", "output_dir", "config", "tiny", "resume", "overwrite", "reward",
    "learning_rate", "steps", "max_steps", "num_train_epochs", "batch_size", "mini_batch_size",
    "per_device_train_batch_size", "max_new_tokens", "use_peft", "lora_r", "lora_alpha", "lora_dropout",
    "lora_target_modules", "seed",
)


def _drop_option(parser, dest: str) -> None:
    """Remove every action writing ``dest`` (a bool field has --x and --no_x)."""
    for action in [a for a in parser._actions if a.dest == dest]:
        parser._remove_action(action)
        for group in parser._action_groups:
            if action in group._group_actions:
                group._group_actions.remove(action)
        for option in action.option_strings:
            parser._option_string_actions.pop(option, None)


def _common_first(parser) -> None:
    """Move the `COMMON_OPTIONS` into a first help group, so --help starts with what a first run needs."""
    group = parser.add_argument_group("common options (all options below)")
    order = {name: i for i, name in enumerate(COMMON_OPTIONS)}
    common = sorted((a for a in parser._actions if a.dest in order and a.option_strings), key=lambda a: order[a.dest])
    for action in common:
        for other in parser._action_groups:
            if action in other._group_actions and other is not group:
                other._group_actions.remove(action)
        group._group_actions.append(action)
    parser._action_groups.remove(group)
    parser._action_groups.insert(1, group)  # after the positionals' group


def build_parser(command: str, dataclass_types: Sequence[type], description: str):
    """An HfArgumentParser for ``rlft <command>`` with help on every option and ``--config``.

    Internal fields (`INTERNAL_FIELDS`, and PPOConfig's `FILLED_FIELDS` where the command has the
    option that fills them) are not options; usage errors raise `CLIError`.
    """
    parser = _parser_class()(
        list(dataclass_types), prog=f"rlft {command}", description=description,
        usage=f"rlft {command} [--config FILE] [--tiny] [--<option> VALUE ...]",  # not 100 lines of every option
        formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False,
    )
    dests = {a.dest for a in parser._actions}
    for name in INTERNAL_FIELDS | {f for f, option in FILLED_FIELDS.items() if option[2:] in dests}:
        if name in dests:
            _drop_option(parser, name)
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
        if action.dest == "fsdp" and action.option_strings:  # --fsdp alone: full_shard (FSDP2)
            action.nargs, action.const, action.metavar = "?", "full_shard", "WORDS"
    parser.add_argument(
        "--config", metavar="FILE", default=None,
        help="A YAML or JSON file of option values (keys as the option names); flags given on the command line win.",
    )
    _common_first(parser)
    return parser


def _options_of(parser) -> dict[str, Any]:
    """option string -> action, for the options that take a value or are flags (not -h)."""
    return {o: a for a in parser._actions for o in a.option_strings if a.dest != "help"}


def _join_negative_values(parser, argv: list[str]) -> list[str]:
    """``--opt -1e-3`` -> ``--opt=-1e-3`` for options that take one value (argparse reads "-1e-3" as an option)."""
    options = _options_of(parser)
    out: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        action = options.get(token)
        if action is not None and action.nargs in (None, "?") and i + 1 < len(argv) and _NUMBER.match(argv[i + 1]):
            out.append(f"{token}={argv[i + 1]}")
            i += 2
            continue
        out.append(token)
        i += 1
    return out


def _reject_unknown(parser, unknown: Sequence[str]) -> None:
    """CLIError naming each unknown option with the closest real one (or the option to use instead)."""
    if not unknown:
        return
    names = sorted(o for o in _options_of(parser) if o.startswith("--") and "-" not in o[2:])
    flags = [t for t in unknown if t.startswith("-")]
    if not flags:
        raise CLIError(f"unexpected value(s) {' '.join(unknown)}: options are written --name value.")
    hints = []
    for token in flags:
        name = token.split("=", 1)[0]
        field = name.lstrip("-").replace("-", "_")
        if field in FILLED_FIELDS and FILLED_FIELDS[field] in names:
            hints.append(f"{name} is filled in from {FILLED_FIELDS[field]}; use {FILLED_FIELDS[field]} instead")
        elif field in INTERNAL_FIELDS:
            hints.append(f"{name} is computed by rlft, not an option")
        else:
            close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
            hints.append(f"unknown option {name}" + (f" (did you mean {close[0]}?)" if close else ""))
    raise CLIError("; ".join(hints) + ". See --help for the options.")


def check_values(objs: Sequence[Any]) -> None:
    """CLIError for the first option outside its range (`VALUE_CHECKS`), naming the option and the range."""
    for obj in objs:
        for f in dataclasses.fields(obj):
            check = VALUE_CHECKS.get(f.name)
            value = getattr(obj, f.name, None)
            if check is None or value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            ok, what = check
            if not ok(value):
                raise CLIError(f"--{f.name} {value}: must be {what}.")


def _saved_command(path: Path) -> str | None:
    """The command named in the header rlft writes at the top of a run's config.yaml (``# rlft <command> ...``)."""
    try:
        with open(path, encoding="utf-8") as fh:
            first = fh.readline()
    except OSError:
        return None
    match = re.match(r"#\s*rlft (\w+) ", first)
    return match.group(1) if match else None


def _drop_internal(values: dict) -> dict:
    return {k: v for k, v in values.items() if k not in INTERNAL_FIELDS and k not in FILLED_FIELDS}


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
    dataclasses. Raises CLIError (one line, with the fix) on an unknown or bad option, a bad config file
    or a value out of range (`VALUE_CHECKS`); SystemExit only for --help.
    """
    parser = build_parser(command, dataclass_types, description)
    known = {a.dest for a in parser._actions if a.dest not in ("help", "config")}
    argv = _join_negative_values(parser, list(argv))

    # Pass 1: only to learn which layers apply (no dataclass is built, so nothing is validated yet).
    first, unknown = parser.parse_known_args(argv)
    _reject_unknown(parser, unknown)
    layers: dict[str, Any] = {}
    layers.update({k: v for k, v in (cli_defaults or {}).items() if k in known})
    if getattr(first, "tiny", False):
        layers.update({k: v for k, v in (tiny_preset or {}).items() if k in known})
    file_values: dict[str, Any] = {}
    if first.config:
        file_values = _drop_internal(load_config_file(first.config))
        _check_keys(file_values, known, f"--config {first.config}")
    if getattr(first, "resume", False) or file_values.get("resume"):
        layers.update(_resumed_values(command, getattr(first, "output_dir", None) or file_values.get("output_dir"), known))
    layers.update(file_values)
    if "output_dir" in known and not (getattr(first, "output_dir", None) or layers.get("output_dir")):
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        layers["output_dir"] = os.path.join(DEFAULT_RUNS_FOLDER, f"{command}-{stamp}")
    parser.set_defaults(**layers)

    # Pass 2: the real parse; __post_init__ checks run here and their errors name the option.
    namespace, unknown = parser.parse_known_args(argv)
    _reject_unknown(parser, unknown)
    values = vars(namespace)
    from ._shard import normalize_options

    normalize_options(values)  # --fsdp / --deepspeed / --accelerate_config: checked and resolved (rlft/cli/_shard.py)
    try:
        objs = tuple(
            dtype(**{f.name: values[f.name] for f in dataclasses.fields(dtype) if f.init and f.name in values})
            for dtype in dataclass_types  # a field that is not an option (INTERNAL_FIELDS) keeps its default
        )
    except (ValueError, TypeError, ImportError) as err:
        raise CLIError(" ".join(str(err).split())) from None
    check_values(objs)
    return objs


def _resumed_values(command: str, run_dir: str | None, known: set[str]) -> dict:
    """The saved options of the run directory that --resume continues (clear errors for the wrong folder)."""
    if not run_dir:
        raise CLIError("--resume needs --output_dir: the run directory to continue.")
    saved = Path(run_dir) / CONFIG_FILE
    if not saved.is_file():
        if not Path(run_dir).exists():
            raise CLIError(f"--resume: {run_dir} does not exist; to start a new run, leave out --resume.")
        raise CLIError(f"--resume: {run_dir} holds no {CONFIG_FILE}; it is not a run directory of rlft {command}.")
    other = _saved_command(saved)
    if other and other != command:
        raise CLIError(
            f"--resume: {run_dir} is a run directory of rlft {other}, not rlft {command}. "
            f"Continue it with: rlft {other} --output_dir {run_dir} --resume"
        )
    values = _drop_internal(load_config_file(saved))
    unknown = [k for k in values if k not in known]
    if unknown and len(unknown) > len(values) // 2:
        raise CLIError(f"--resume: {saved} does not look like a config of rlft {command} ({len(unknown)} of its "
                       f"{len(values)} options are not options of rlft {command}).")
    _check_keys(values, known, str(saved))
    return values


def merged_config(*objs: Any) -> dict:
    """The ``__init__`` fields of several dataclasses in one flat dict (what config.yaml holds; no `INTERNAL_FIELDS`)."""
    out: dict[str, Any] = {}
    for obj in objs:
        for f in dataclasses.fields(obj):
            if f.init and f.name not in INTERNAL_FIELDS:
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
