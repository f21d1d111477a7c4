"""Dataclass configurations that double as command-line parsers (every recipe's flags).

A recipe's configuration is a dataclass whose fields carry their help text in
``field(metadata={"help": ...})``. :func:`parse_config` turns it into an
``argparse`` parser, so ``--help`` documents every field, and bad values end in
argparse's one-line error instead of a traceback.

Every recipe also takes ``--config FILE.json|.yaml``: the file is read by
``transformers.HfArgumentParser`` (unknown keys are refused), its values become the
defaults, and flags given on the command line override them.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from hsrl.errors import first_line

__all__ = ["add_dataclass_arguments", "parse_config"]

C = TypeVar("C")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    """``int | None`` -> ``(int, True)``; ``int`` -> ``(int, False)``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _optional(parse: Any) -> Any:
    def convert(text: str) -> Any:
        return None if text.lower() in {"none", "null", ""} else parse(text)

    convert.__name__ = getattr(parse, "__name__", "value")
    return convert


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one ``--flag`` per field of the dataclass ``cls`` to ``parser``."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp, optional = _unwrap_optional(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        help_text = f.metadata.get("help", "")
        choices = f.metadata.get("choices")
        kwargs: dict[str, Any] = {"default": default, "dest": f.name}
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(tp) in (list, tuple):
            (item,) = set(typing.get_args(tp)) - {Ellipsis}
            kwargs.update(type=item, nargs="*")
        else:
            if typing.get_origin(tp) is typing.Literal:
                choices = list(typing.get_args(tp))
                tp = type(choices[0])
            kwargs["type"] = _optional(tp) if optional else tp
        if choices is not None:
            kwargs["choices"] = choices
        kwargs["help"] = f"{help_text} (default: %(default)s)"
        parser.add_argument(_flag(f.name), **kwargs)


def parse_config(cls: type[C], argv: Sequence[str] | None = None, description: str | None = None) -> C:
    """Parse ``argv`` into an instance of the dataclass ``cls``.

    Values are validated by ``cls.__post_init__`` if it has one, then by each field's
    ``metadata["check"]`` callable; their ``ValueError`` becomes argparse's one-line usage
    error (exit status 2).
    """
    parser = argparse.ArgumentParser(description=description or (cls.__doc__ or "").strip().splitlines()[0])
    parser.add_argument("--config", metavar="FILE", default=None,
                        help="a .json or .yaml file of these options (flags given here override it)")  # fmt: skip
    add_dataclass_arguments(parser, cls)
    config_file = parser.parse_known_args(argv)[0].config
    if config_file is not None:
        try:
            parser.set_defaults(**_read_config_file(cls, config_file))
        except (ValueError, OSError) as error:
            parser.error(f"--config {config_file}: {first_line(error)}")
    values = vars(parser.parse_args(argv))
    values.pop("config")
    try:
        config = cls(**_tuples(cls, values))
        _run_field_checks(config)
    except ValueError as error:
        parser.error(str(error))
        raise  # unreachable: parser.error exits
    return config


def _run_field_checks(config: Any) -> None:
    """Call each field's ``metadata["check"](value)`` (e.g. ``--push-to-hub``: a valid id, not offline)."""
    for f in dataclasses.fields(config):
        check = f.metadata.get("check")
        if check is not None:
            check(getattr(config, f.name))


def _tuples(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """Lists for tuple-typed fields become tuples (argparse and JSON both give lists)."""
    hints = typing.get_type_hints(cls)
    for name, value in values.items():
        if isinstance(value, list) and typing.get_origin(_unwrap_optional(hints[name])[0]) is tuple:
            values[name] = tuple(value)
    return values


def _read_config_file(cls: type, path: str) -> dict[str, Any]:
    """The file's values, checked by ``HfArgumentParser`` (and by ``cls.__post_init__``): ``{field: value}``."""
    from transformers import HfArgumentParser

    file = Path(path)
    if not file.is_file():
        raise ValueError("no such file")
    reader = HfArgumentParser(cls)  # type: ignore[arg-type]
    suffix = file.suffix.lower()
    if suffix == ".json":
        (config,) = reader.parse_json_file(file)
    elif suffix in {".yaml", ".yml"}:
        (config,) = reader.parse_yaml_file(file)
    else:
        raise ValueError("expected a .json, .yaml or .yml file")
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(cls) if f.init}
