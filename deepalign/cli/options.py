"""The command line's configuration: ``--set field=value``, ``--config FILE.json``, the
presets, and the options the table jobs share."""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from deepalign.model import MSAConfig
from deepalign.training import TrainConfig

__all__ = [
    "ConfigError",
    "build_configs",
    "config_fields",
    "flat_config",
    "parse_assignment",
    "read_config_file",
    "seed_list",
    "slug",
]


class ConfigError(ValueError):
    """A configuration value or file the command line cannot use; the message says why."""


def config_fields() -> dict[str, type]:
    """Field name -> the configuration class that owns it (MSAConfig or TrainConfig).

    Example:
        >>> fields = config_fields()
        >>> fields["lr_text"].__name__, fields["align_on"].__name__
        ('TrainConfig', 'MSAConfig')
    """
    owners: dict[str, type] = {}
    for cls in (MSAConfig, TrainConfig):
        for f in dataclasses.fields(cls):
            if f.name in owners:
                raise RuntimeError(f"field {f.name!r} is in both MSAConfig and TrainConfig")
            owners[f.name] = cls
    return owners


def _field_type(name: str) -> Any:
    owner = config_fields()[name]
    return typing.get_type_hints(owner)[name]


def _unknown_field(name: str, source: str) -> ConfigError:
    owners = config_fields()
    close = difflib.get_close_matches(name, list(owners), n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    listing = "; ".join(
        f"{cls.__name__}: {', '.join(n for n, c in owners.items() if c is cls)}"
        for cls in (MSAConfig, TrainConfig)
    )
    return ConfigError(f"{source}: unknown field {name!r}.{hint} Valid fields are {listing}")


def _convert(value: Any, tp: Any, where: str, *, text: bool) -> Any:
    """``value`` (a JSON value, or a string from the command line when ``text``) as type
    ``tp`` of a config field; raises :class:`ConfigError` naming ``where``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and (
            value is None or (text and value.strip().lower() in ("none", "null"))
        ):
            return None
        for arm in (a for a in args if a is not type(None)):
            try:
                return _convert(value, arm, where, text=text)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: expected {_describe(tp)}, got {value!r}")
    if tp is bool:
        if text and value.strip().lower() in ("true", "1", "yes", "on"):
            return True
        if text and value.strip().lower() in ("false", "0", "no", "off"):
            return False
        if not text and isinstance(value, bool):
            return value
    elif tp is int:
        if text and re.fullmatch(r"\s*[+-]?\d+\s*", value):
            return int(value)
        if not text and isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if text:
            try:
                return float(value)
            except ValueError:
                pass
        elif isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if text or isinstance(value, str):
            return value
    elif origin is tuple:
        items = value
        if text:
            inner = value.strip().strip("()[]")
            items = [item for item in inner.split(",") if item.strip()] if inner.strip() else []
        if isinstance(items, list | tuple):
            variadic = bool(args) and args[-1] is Ellipsis
            kinds = [args[0]] * len(items) if variadic else list(args)
            if len(kinds) == len(items):
                return tuple(
                    _convert(item, kind, f"{where}[{i}]", text=text)
                    for i, (item, kind) in enumerate(zip(items, kinds, strict=True))
                )
    else:  # pragma: no cover - a field type this parser does not know
        raise ConfigError(f"{where}: fields of type {tp} cannot be set from the command line")
    raise ConfigError(f"{where}: expected {_describe(tp)}, got {value!r}")


def _describe(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if tp is type(None):
        return "none"
    if origin is tuple:
        if args and args[-1] is Ellipsis:
            return f"comma-separated {_describe(args[0])}s"
        return f"{len(args)} comma-separated values ({', '.join(_describe(a) for a in args)})"
    return {bool: "true or false", int: "an int", float: "a number", str: "a string"}.get(
        tp, str(tp)
    )


def parse_assignment(text: str) -> tuple[str, Any]:
    """Parse one ``--set field=value`` into the field's name and its typed value.

    The value is read as the field's type: ``int``, ``float``, ``bool`` (``true``/``false``,
    ``1``/``0``, ``yes``/``no``), ``str``, ``none``/``null`` where the field may be ``None``,
    and comma-separated items for tuples (``feature_dims=768,74,35``). The dataclasses check
    the values when the configs are built (:func:`build_configs`).

    Args:
        text: ``"field=value"``.

    Returns:
        ``(field, value)``.

    Raises:
        ConfigError: for a missing ``=``, an unknown field (the message lists the valid ones)
            or a value that is not of the field's type.

    Example:
        >>> parse_assignment("feature_dims=768,74,35"), parse_assignment("align_dim=none")
        (('feature_dims', (768, 74, 35)), ('align_dim', None))
    """
    name, sep, value = text.partition("=")
    name = name.strip()
    if not sep or not name:
        raise ConfigError(f"--set {text!r}: expected field=value")
    if name not in config_fields():
        raise _unknown_field(name, f"--set {text!r}")
    return name, _convert(value, _field_type(name), f"--set {name}", text=True)


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a flat JSON object of config fields (MMSA style: ``{"batch_size": 32, ...}``).

    Keys are fields of :class:`~deepalign.MSAConfig` or :class:`~deepalign.training.TrainConfig`
    (the ``config.json`` that the table jobs of :func:`deepalign.cli.main` write beside their
    results is such a file); values are JSON values of the field's type (lists for tuples,
    ``null`` for ``None``).

    Args:
        path: the JSON file.

    Returns:
        Field -> typed value.

    Raises:
        ConfigError: if the file is missing, is not a JSON object, has an unknown key (the
            message lists the valid ones) or a value of the wrong type.
    """
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except OSError as error:
        raise ConfigError(f"--config {path}: cannot read it ({error.strerror})") from None
    except ValueError as error:
        raise ConfigError(f"--config {path}: not valid JSON ({error})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"--config {path}: expected a JSON object, got {type(raw).__name__}")
    out = {}
    for name, value in raw.items():
        if name not in config_fields():
            raise _unknown_field(name, f"--config {path}")
        out[name] = _convert(value, _field_type(name), f"--config {path}: {name}", text=False)
    return out


def build_configs(
    dataset: str, overrides: Sequence[tuple[str, Mapping[str, Any]]] = ()
) -> tuple[MSAConfig, TrainConfig]:
    """The presets of ``dataset`` with each source of overrides applied in order.

    Args:
        dataset: ``"mosi"``, ``"mosei"`` or ``"sims"``.
        overrides: ``(source, {field: value})`` pairs; a later source wins. ``source`` names
            where the values came from in error messages (``"--set"``, a file, ...).

    Returns:
        ``(MSAConfig, TrainConfig)``, validated by their constructors.

    Raises:
        ConfigError: for an unknown field, a ``dataset`` field that contradicts ``dataset``,
            or a value the dataclasses reject (their message, with its source).

    Example:
        >>> model, train = build_configs("mosei", [("--set", {"lr_text": 1e-5, "align_dim": 8})])
        >>> model.align_dim, train.lr_text, train.batch_size
        (8, 1e-05, 32)
    """
    owners = config_fields()
    values: dict[type, dict[str, Any]] = {MSAConfig: {}, TrainConfig: {}}
    sources: dict[str, str] = {}
    for source, items in overrides:
        for name, value in items.items():
            if name not in owners:
                raise _unknown_field(name, source)
            if name == "dataset" and value != dataset:
                raise ConfigError(
                    f"{source}: dataset={value!r} contradicts this run's dataset {dataset!r} "
                    "(choose the dataset with the example or its --dataset option)"
                )
            if name == "dataset":
                continue  # the preset sets it
            values[owners[name]][name] = value
            sources[name] = source
    configs = []
    for cls in (MSAConfig, TrainConfig):
        try:
            configs.append(cls.preset(dataset, **values[cls]))
        except (TypeError, ValueError) as error:
            named = re.match(r"\w+", str(error))  # the dataclasses' messages start with the field
            if named and named[0] in sources:
                where = sources[named[0]]
            else:
                where = " / ".join(sorted({sources[n] for n in values[cls]})) or "the preset"
            raise ConfigError(f"{where}: {error}") from None
    return configs[0], configs[1]


def flat_config(model_config: MSAConfig, train_config: TrainConfig) -> dict[str, Any]:
    """The resolved configuration as the flat JSON that ``--config`` reads."""
    return json.loads(json.dumps({**asdict(model_config), **asdict(train_config)}))


# ---------------------------------------------------------------------- command line


def seed_list(text: str) -> list[int]:
    """``"1111"`` -> ``[1111]``; ``"1111..1115"`` -> ``[1111, ..., 1115]`` (inclusive)."""
    match = re.fullmatch(r"(\d+)(?:\.\.(\d+))?", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"expected a seed or a range A..B, got {text!r}")
    first, last = int(match[1]), int(match[2] or match[1])
    if last < first:
        raise argparse.ArgumentTypeError(f"expected A <= B in {text!r}")
    return list(range(first, last + 1))


def slug(name: str) -> str:
    """A folder name for a row name: ``"deepalign V-A"`` -> ``"deepalign_V-A"``."""
    return re.sub(r"[^\w+-]+", "_", name).strip("_")
