"""Command-line options derived from the config dataclasses, so that each option, its default and
its help text are declared once (``field(metadata={"help": ...})``, as PEFT does).

    @app.command("purify")
    @with_configs(config=Options(PurifyConfig, names={"identify.signals": "identify"}))
    def purify_command(config: PurifyConfig, out: Path = typer.Option(...)): ...

Each field becomes ``--field-name`` (nested dataclasses by their leaf name unless renamed; a
clash is an error at import), with the field's default and help. Tuples of strings or ints are
comma-separated; a pair of floats takes two values. The command receives the built dataclass.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from dataclasses import dataclass, field
from types import UnionType
from typing import Any, Union

import typer

from seed.errors import SeedError


@dataclass(frozen=True)
class Options:
    """The options one config dataclass contributes to a command.

    ``only``: the dotted field paths to expose (default: every leaf field); ``names``: path →
    option name (without ``--``) where the leaf name is not right; ``fixed``: path → value set by
    the command itself (not an option).
    """

    cls: type
    only: tuple[str, ...] | None = None
    names: dict[str, str] = field(default_factory=dict)
    fixed: dict[str, Any] = field(default_factory=dict)

    def leaves(self) -> list[tuple[str, dataclasses.Field, Any, Any]]:
        """(dotted path, field, resolved type, default) of every exposed leaf field."""
        out = []
        for path, f, kind, default in _leaves(self.cls):
            if (self.only is None or path in self.only) and path not in self.fixed:
                out.append((path, f, kind, default))
        missing = set(self.only or ()) - {p for p, *_ in out}
        if missing:
            raise TypeError(f"{self.cls.__name__} has no option field(s) {', '.join(sorted(missing))}")
        return out

    def option_name(self, path: str) -> str:
        return self.names.get(path, path.rsplit(".", 1)[-1]).replace("_", "-")


def _leaves(cls: type, prefix: str = "") -> list[tuple[str, dataclasses.Field, Any, Any]]:
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        kind, path = hints[f.name], prefix + f.name
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(kind):
            out += _leaves(kind, path + ".")
        elif typing.get_origin(kind) is not dict:
            out.append((path, f, kind, default))
    return out


def _optional(kind: Any) -> tuple[Any, bool]:
    """(the type inside ``X | None``, whether None was allowed)."""
    if typing.get_origin(kind) in (Union, UnionType) and type(None) in typing.get_args(kind):
        inner = [a for a in typing.get_args(kind) if a is not type(None)]
        return inner[0], True
    return kind, False


def _is_list(kind: Any) -> bool:
    """``tuple[X, ...]``: given on the command line as comma-separated values."""
    args = typing.get_args(kind)
    return typing.get_origin(kind) is tuple and len(args) == 2 and args[1] is Ellipsis


def cli_type(kind: Any) -> Any:
    """The type typer parses for a field type."""
    inner, optional = _optional(kind)
    if _is_list(inner):
        return typing.Optional[str]
    if typing.get_origin(inner) is tuple:
        pair = typing.Tuple[typing.get_args(inner)]  # noqa: UP006 (typer reads typing.Tuple)
        return typing.Optional[pair] if optional else pair
    return typing.Optional[inner] if optional else inner


def cli_default(kind: Any, default: Any) -> Any:
    """A field default as the command line shows and parses it."""
    inner, _ = _optional(kind)
    if _is_list(inner) and default is not None:
        return ",".join(str(v) for v in default)
    return default


def from_cli(kind: Any, value: Any, option: str) -> Any:
    """A parsed command-line value as the field's type."""
    inner, _ = _optional(kind)
    if value is None or not _is_list(inner):
        return value
    item = typing.get_args(inner)[0]
    parts = [p.strip() for p in value.split(",") if p.strip()]
    try:
        return tuple(item(p) for p in parts)
    except ValueError:
        raise SeedError(f"--{option} takes comma-separated {item.__name__} values, e.g. 1,2,3; not {value!r}") from None


def build(cls: type, values: dict[str, Any], prefix: str = ""):
    """``cls`` with the given dotted-path values (nested dataclasses built the same way)."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        path = prefix + f.name
        if dataclasses.is_dataclass(hints[f.name]):
            if any(p.startswith(path + ".") for p in values):
                kwargs[f.name] = build(hints[f.name], values, path + ".")
        elif path in values:
            kwargs[f.name] = values[path]
    return cls(**kwargs)


def with_configs(**groups: Options):
    """Decorate a command whose parameters named in ``groups`` take config dataclasses: the
    command line gets one option per exposed field instead, and the function the built objects."""

    def decorate(fn):
        signature = inspect.signature(fn)
        hints = typing.get_type_hints(fn)
        own = [p.replace(annotation=hints.get(name, p.annotation)) for name, p in signature.parameters.items() if name not in groups]
        derived: dict[str, list[tuple[str, str, Any, str]]] = {}  # group → (parameter, path, type, option)
        taken = {p.name.replace("_", "-") for p in own}
        params = list(own)
        for key, group in groups.items():
            derived[key] = []
            for path, f, kind, default in group.leaves():
                option = group.option_name(path)
                if option in taken:
                    raise TypeError(f"{fn.__name__}: option --{option} is declared twice")
                taken.add(option)
                name = f"{key}__{path.replace('.', '__')}"
                decls = [f"--{option}/--no-{option}"] if cli_type(kind) is bool and default else [f"--{option}"]
                value = typer.Option(cli_default(kind, default), *decls, help=f.metadata.get("help"))
                params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=value, annotation=cli_type(kind)))
                derived[key].append((name, path, kind, option))

        @functools.wraps(fn)
        def command(**kwargs):
            for key, fields in derived.items():
                values = {path: from_cli(kind, kwargs.pop(name), option) for name, path, kind, option in fields}
                kwargs[key] = build(groups[key].cls, {**values, **groups[key].fixed})
            return fn(**kwargs)

        command.__signature__ = signature.replace(parameters=[p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in params])
        command.__annotations__ = {p.name: p.annotation for p in params}
        command.derived_options = {name: (groups[key].cls, path) for key, fields in derived.items() for name, path, _, _ in fields}
        return command

    return decorate
