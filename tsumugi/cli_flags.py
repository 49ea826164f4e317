"""Command-line flags declared once, as typed data, and the one function that turns them into argparse arguments:
every CLI of the project (`python -m service`, `python -m training ...`) adds its flags through `add_flags`.

A training command's flags are the fields of a `@command_settings` class (a frozen dataclass). The field's type,
default and `setting(...)` metadata say everything: `--name` from the field name, `type`, `choices` from a
`Literal`, `nargs="+"` from a list, `store_true` or `--x/--no-x` from a bool. So a default is written in one
place, and the handler can read the parsed values back as that class (`settings_from`). Pydantic settings derive
their `Flag`s from their fields instead (`service.config.settings_flags`, `training.config.sft_flags`). Standard
library only: `python -m training memory` declares its flags here and must stay instant.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
from collections.abc import Iterable
from dataclasses import MISSING, dataclass, field
from typing import Any, Literal, TypeVar, Union, dataclass_transform, get_args, get_origin, get_type_hints

Settings = TypeVar("Settings")


@dataclass(frozen=True)
class Flag:
    """One option as argparse takes it; `group` titles an argument group in `--help`, and the flags sharing an
    `exclusive` name exclude each other."""

    option: str
    dest: str
    help: str | None = None
    required: bool = False
    default: Any = None
    kind: dict[str, Any] = field(default_factory=dict)  # type, choices, nargs, action, metavar
    group: str | None = None
    exclusive: str | None = None


def setting(
    default: Any = MISSING, help: str | None = None, *, flag: str | None = None, group: str | None = None, **kind: Any
) -> Any:
    """A dataclass field that is also a flag. `flag` overrides the option name (`--in` for `in_path`); `kind`
    overrides what the type implies (a validating `type=` function, `action="append"`, `metavar`)."""
    return field(default=default, metadata={"help": help, "flag": flag, "group": group, "kind": kind})


@dataclass_transform(frozen_default=True, kw_only_default=True, field_specifiers=(setting,))
def command_settings(cls: type[Settings]) -> type[Settings]:
    """A command's flags as a frozen, keyword-only dataclass whose fields are `setting(...)`s."""
    return dataclass(frozen=True, kw_only=True)(cls)


def flags_of(settings: type, group: str | None = None) -> list[Flag]:
    """The flags of a settings class, in field order; `group` titles their argument group in `--help`."""
    hints = get_type_hints(settings)
    flags = []
    for item in dataclasses.fields(settings):
        meta = item.metadata
        required = item.default is MISSING
        default = None if required else item.default
        kind = _kind(hints[item.name], default) | meta.get("kind", {})
        if {"action", "type"} & set(meta.get("kind", {})):  # an action, or a type= function, takes the value whole
            kind.pop("nargs", None)
        if "action" in meta.get("kind", {}):
            kind.pop("type", None)
        option = meta.get("flag") or "--" + item.name.replace("_", "-")
        flags.append(Flag(option, item.name, meta.get("help"), required, default, kind, meta.get("group") or group))
    return flags


def _kind(annotation: Any, default: Any) -> dict[str, Any]:
    """argparse settings implied by a field type: bool -> store_true (default False) or --x/--no-x (default
    True), Literal -> choices, list[T] -> one or more T, Path/int/float -> type; str needs nothing."""
    annotation = _without_none(annotation)
    if annotation is bool:
        return {"action": argparse.BooleanOptionalAction if default else "store_true"}
    if get_origin(annotation) is Literal:
        return {"choices": list(get_args(annotation))}
    if get_origin(annotation) is list:
        return {"nargs": "+"} | _kind(get_args(annotation)[0], None)
    return {} if annotation is str else {"type": annotation}


def _without_none(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, types.UnionType):
        members = [member for member in get_args(annotation) if member is not type(None)]
        if len(members) == 1:
            return members[0]
    return annotation


def add_flags(parser: argparse.ArgumentParser, flags: Iterable[Flag]) -> None:
    """Each flag on `parser`, in its argument group or mutually exclusive group when it names one."""
    groups: dict[Any, Any] = {}
    for flag in flags:
        target: Any = parser
        if flag.group is not None:
            if flag.group not in groups:
                groups[flag.group] = parser.add_argument_group(flag.group)
            target = groups[flag.group]
        if flag.exclusive is not None:
            if (flag.group, flag.exclusive) not in groups:
                groups[(flag.group, flag.exclusive)] = target.add_mutually_exclusive_group()
            target = groups[(flag.group, flag.exclusive)]
        extra = {"required": True} if flag.required else {"default": flag.default}
        target.add_argument(flag.option, dest=flag.dest, help=flag.help, **extra, **flag.kind)


def settings_from(settings: type[Settings], args: argparse.Namespace) -> Settings:
    """The dataclass the parsed flags describe (the namespace holds one attribute per field)."""
    return settings(**{item.name: getattr(args, item.name) for item in dataclasses.fields(settings)})
