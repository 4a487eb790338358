"""Settings declared once. A study's sections (``DataConfig`` here, the others in ``search.study.spec``) are frozen
dataclasses whose field types say what each setting may be:
``Annotated`` bounds (annotated_types' ``Ge``, ``Gt``, ``Le``, ``Lt``), ``Literal`` choices, ``X | None`` for null.
pydantic v2 checks a mapping against that declaration in strict mode (no "5" for 5, no 1 for true), and ``rule``
words what a field allows from the same declaration, so a message cannot drift from the type it reports on.

``read(cls, raw, where)`` builds one section from a mapping (a study file's, a recorded ``study.json``'s) and names
every bad field at once, as ``where.field: VALUE must be RULE``; ``value_problem`` checks one value of one field (a
search axis's values against the setting it overrides)."""

from __future__ import annotations

import dataclasses
import functools
import json
import types
import typing
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from annotated_types import Ge, Gt, Le, Lt
from pydantic import TypeAdapter, ValidationError

STRICT = {"strict": True, "extra": "forbid"}  # every section's pydantic config (``__pydantic_config__``)
YAML_TEXT = "YAML reads 1e-4 as text: write 1.0e-4"  # PyYAML follows YAML 1.1: an exponent needs a dot


def read(cls: type, raw: Any, where: str) -> tuple[Any, list[str]]:
    """``cls`` built from mapping ``raw`` (None: every default), and the problems found: each unknown key and each
    value its field's type refuses, named ``where.key``. With problems, the instance holds the values that passed
    and defaults for the rest, so that checks across fields still see what they can."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        return cls(), [f"{where}: must be a mapping, got {type(raw).__name__}"]
    # A key YAML reads as a number, a truth value or a date (`1:`, `on:`) is no field's name.
    odd = [_unknown(cls, where, k) for k in raw if not isinstance(k, str)]
    raw = {k: v for k, v in raw.items() if isinstance(k, str)}
    try:
        return _adapter(cls).validate_json(_json(raw), strict=True), odd
    except ValidationError as exc:
        bad = {str(e["loc"][0]) for e in exc.errors() if e["loc"]}
        passed = _adapter(cls).validate_json(_json({k: v for k, v in raw.items() if k not in bad}), strict=True)
        return passed, odd + _problems(cls, raw, where, exc)


def check(instance: Any) -> tuple[Any, list[str]]:
    """``instance`` (one made in code: nothing read it) checked against its class's declaration: the instance with
    each refused value set to its default, and the problems, each as ``field: VALUE must be RULE``."""
    values = {f.name: getattr(instance, f.name) for f in dataclasses.fields(instance)}
    passed, problems = read(type(instance), values, "")
    return passed, [p.removeprefix(".") for p in problems]


def value_problem(cls: type, key: str, value: Any) -> str | None:
    """What is wrong with ``value`` for field ``key`` of ``cls`` (null refused too: a searched value is a value), or
    None."""
    hint = _not_null(hints(cls)[key])
    try:
        _adapter(hint).validate_json(_json(value), strict=True)
    except ValidationError:
        return _must(value, hint)
    return None


@functools.cache
def hints(cls: type) -> dict[str, Any]:
    """Each field's declared type, with its ``Annotated`` bounds."""
    return typing.get_type_hints(cls, include_extras=True)


def rule(hint: Any) -> str:
    """What a declared type allows, in words: "an integer in [1, 6]", "one of adam, sgd", "null or a number > 0"."""
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, types.UnionType):  # each alternative: "null, auto or a number >= 0"
        words = [w for a in args for w in _alternatives(a)]
        return f"{', '.join(words[:-1])} or {words[-1]}"
    if origin is Annotated:
        return _bounded(args[0], args[1:])
    if origin is Literal:
        return ("one of " if len(args) > 1 else "") + ", ".join(str(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_plural(args[0])}"
        return f"a list of {len(args)} {_plural(args[0])}" if args else "a list"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a text"}.get(hint, "valid")


def _alternatives(hint: Any) -> list[str]:
    if hint is type(None):
        return ["null"]
    if hint is bool:
        return ["true", "false"]
    return [str(a) for a in get_args(hint)] if get_origin(hint) is Literal else [rule(hint)]


def _bounded(base: Any, bounds: tuple) -> str:
    noun = rule(base)
    low = next(((b.ge, "[", ">=") for b in bounds if isinstance(b, Ge)), None) or next(
        ((b.gt, "(", ">") for b in bounds if isinstance(b, Gt)), None
    )
    high = next(((b.le, "]", "<=") for b in bounds if isinstance(b, Le)), None) or next(
        ((b.lt, ")", "<") for b in bounds if isinstance(b, Lt)), None
    )
    if low and high:
        return f"{noun} in {low[1]}{low[0]}, {high[0]}{high[1]}"
    if low or high:
        value, _, sign = low or high
        return f"{noun} {sign} {value}"
    return noun


def _plural(hint: Any) -> str:
    if get_origin(hint) in (Union, types.UnionType):
        return " or ".join(_plural(a) for a in get_args(hint))
    return {int: "integers", float: "numbers", str: "texts", dict: "mappings"}.get(hint, "values")


def _not_null(hint: Any) -> Any:
    if get_origin(hint) in (Union, types.UnionType):
        kinds = [a for a in get_args(hint) if a is not type(None)]
        return kinds[0] if len(kinds) == 1 else Union[tuple(kinds)]  # noqa: UP007 (a runtime union of given types)
    return hint


@functools.cache
def _adapter(kind: Any) -> TypeAdapter:
    return TypeAdapter(kind)


def _json(value: Any) -> str:
    """Strict mode on JSON: a list may fill a tuple and an integer a float, as YAML and JSON files write them, while
    a text never passes for a number nor a number for true. What JSON cannot hold (a YAML date) becomes its text."""
    return json.dumps(value, default=str)


def _problems(cls: type, raw: dict, where: str, exc: ValidationError) -> list[str]:
    keys = dict.fromkeys(str(e["loc"][0]) for e in exc.errors() if e["loc"])
    known = hints(cls)
    return [f"{where}.{k}: {_must(raw.get(k), known[k])}" if k in known else _unknown(cls, where, k) for k in keys]


def _unknown(cls: type, where: str, key: Any) -> str:
    return f"{where}.{key}: unknown key; allowed: {', '.join(f.name for f in dataclasses.fields(cls))}"


def _must(value: Any, hint: Any) -> str:
    text = f"{value!r} must be {rule(hint)}"
    if isinstance(value, str) and "number" in text and _is_number(value):
        text += f" ({YAML_TEXT})"
    return text


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
