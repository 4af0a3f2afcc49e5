"""Dataclass configs read from YAML, with dotted `key=value` overrides from the command line.

Every recipe in `configs/` is a YAML file that maps onto one dataclass tree. Loading checks
each key against the dataclass (an unknown or mistyped key is an error naming its dotted path,
never silently ignored) and converts values to the annotated types, so `optim.lr=3e-4` on the
command line and `lr: 3e-4` in YAML mean the same thing.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from chuan.errors import InputError

T = TypeVar("T")


class ConfigError(InputError):
    """A config value that does not fit its dataclass; the message names the dotted key."""


def bounded(
    default: Any,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
) -> Any:
    """A numeric dataclass field with its valid range, checked when a config is loaded (so a
    bad value fails before any work starts, naming its dotted key and the range):
    `lr: float = bounded(2e-4, gt=0)`. `None` stays allowed for optional fields."""
    bounds = {
        name: value
        for name, value in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt))
        if value is not None
    }
    return dataclasses.field(default=default, metadata={"range": bounds})


_RANGE_TESTS = {
    "ge": (lambda v, b: v >= b, ">="),
    "gt": (lambda v, b: v > b, ">"),
    "le": (lambda v, b: v <= b, "<="),
    "lt": (lambda v, b: v < b, "<"),
}


def _check_range(value: Any, bounds: dict, key: str) -> None:
    if value is None or not bounds:
        return
    for name, bound in bounds.items():
        test, sign = _RANGE_TESTS[name]
        if not test(value, bound):
            valid = " and ".join(f"{_RANGE_TESTS[n][1]} {b}" for n, b in bounds.items())
            raise ConfigError(f"{key} must be {valid}, got {value!r}")


def _convert(value: Any, annotation: Any, key: str) -> Any:
    """`value` (from YAML or a `key=value` string) as `annotation`, or a `ConfigError`."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {value!r} fits no type")
    if annotation is Any:
        return value
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return from_dict(annotation, value, prefix=f"{key}.")
    if origin in (list, tuple):
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, (list, tuple)):
            value = [value]
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{key}: expected {len(args)} values, got {value!r}")
            pairs = enumerate(zip(value, args, strict=True))
            return tuple(_convert(v, a, f"{key}.{i}") for i, (v, a) in pairs)
        item = args[0] if args else Any
        converted = [_convert(v, item, f"{key}.{i}") for i, v in enumerate(value)]
        return tuple(converted) if origin is tuple else converted
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if annotation is bool:
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if annotation in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        try:
            number = float(value) if isinstance(value, str) else value
            if annotation is int:
                if float(number) != int(float(number)):
                    raise ValueError
                return int(float(number))
            return float(number)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected {annotation.__name__}, got {value!r}") from None
    if annotation is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    return value


def from_dict(cls: type[T], data: dict, *, prefix: str = "") -> T:
    """Build dataclass `cls` from a mapping, checking every key and converting every value."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"unknown key '{prefix}{unknown[0]}'; {cls.__name__} takes: {', '.join(sorted(names))}"
        )
    kwargs = {name: _convert(v, hints[name], f"{prefix}{name}") for name, v in data.items()}
    for f in dataclasses.fields(cls):
        if f.name in kwargs:
            _check_range(kwargs[f.name], f.metadata.get("range", {}), f"{prefix}{f.name}")
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field is missing
        raise ConfigError(f"{prefix or cls.__name__}: {e}") from None


def to_dict(config: Any) -> dict:
    """A plain, YAML-safe mapping of a dataclass tree (tuples become lists)."""

    def plain(value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(config))


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `a.b.c=value` strings to a nested mapping; list items are addressed by index.

    Values are parsed as YAML scalars (`3e-4`, `true`, `[1, 2]`, `null`).
    """
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not KEY=VALUE (e.g. optim.lr=3e-4)")
        parts = key.split(".")
        node: Any = data
        for depth, part in enumerate(parts[:-1]):
            where = ".".join(parts[: depth + 1])
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"override {key}: {where} is not an index of the list")
                node = node[int(part)]
            else:
                node = node.setdefault(part, {})
                if not isinstance(node, (dict, list)):
                    raise ConfigError(f"override {key}: {where} is a value, not a section")
        value = yaml.safe_load(raw) if raw else ""
        last = parts[-1]
        if isinstance(node, list):
            if not last.isdigit() or int(last) >= len(node):
                raise ConfigError(f"override {key}: {last} is not an index of the list")
            node[int(last)] = value
        else:
            node[last] = value
    return data


def load_config(cls: type[T], path: str | Path | None, overrides: list[str] = ()) -> T:
    """Read YAML `path` (or start empty), apply dotted overrides, build `cls`."""
    data: dict = {}
    if path is not None:
        text = Path(path).read_text(encoding="utf-8")
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
    data = apply_overrides(data, list(overrides))
    try:
        return from_dict(cls, data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path else str(e)) from None
