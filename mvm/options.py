"""Options declared once: each is a dataclass field whose metadata holds its range or choices,
whether it is a command-line flag, whether a resumed run may change it and what a saved config
that lacks it meant; its help is the string literal under the field.

Declare a field with `option(...)`; from the fields come the click options (`click_options`, used
by mvm-ingest, mvm-train and mvm-probe) and the checks of values read from files
(`value_problem`, the same ranges the flags enforce). Nested dataclass fields (TrainConfig.model)
are sections: their fields are named with dots ("model.mask_ratio").
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import json
import math
import types
import typing
from dataclasses import MISSING, dataclass
from pathlib import Path

import click


@dataclass(frozen=True)
class Option:
    """What a field accepts and how it is offered; `option` builds it, `leaves` reads it back."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[str, ...] | None = None
    free_text: bool = False
    """A string with no fixed set (a path, a shard spec): stated so that a forgotten `choices` shows."""
    flag: bool = True
    required: bool = False
    resume_may_change: bool = False
    has_legacy: bool = False
    legacy: object = None
    """With has_legacy: what a saved config that lacks the field meant (the behaviour before the
    field existed)."""


def option(
    default=MISSING,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    choices: tuple[str, ...] | None = None,
    free_text: bool = False,
    flag: bool = True,
    required: bool = False,
    resume_may_change: bool = False,
    legacy=MISSING,
):
    """A dataclass field with its Option as metadata; `low`/`high` bound numbers (and each element of
    a tuple), inclusive unless `*_open`; no default (MISSING) makes the flag required."""
    spec = Option(
        low, high, low_open, high_open, choices, free_text, flag, required, resume_may_change,
        has_legacy=legacy is not MISSING, legacy=None if legacy is MISSING else legacy,
    )  # fmt: skip
    return dataclasses.field(default=default, metadata={"option": spec})  # tuples, not lists: immutable


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """{field name: its docstring} of a dataclass, read from the string literal after each field."""
    body = ast.parse(inspect.getsource(cls)).body[0].body
    docs = {}
    for node, following in zip(body, body[1:], strict=False):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            docs[node.target.id] = " ".join(following.value.value.split())
    return docs


@dataclass(frozen=True)
class Leaf:
    """One field that holds a value (not a section), with everything declared about it."""

    name: str
    """Dotted from the root dataclass: "data.batch_size"."""
    field: dataclasses.Field
    kind: object
    """The resolved annotation: int, float, str, bool, Path, tuple[int, int], int | None, ..."""
    spec: Option
    doc: str


@functools.cache
def leaves(cls: type) -> tuple[Leaf, ...]:
    """Every value field of dataclass `cls`, sections (nested dataclasses) flattened in order."""
    hints = typing.get_type_hints(cls)
    found = []
    for item in dataclasses.fields(cls):
        kind = hints[item.name]
        if dataclasses.is_dataclass(kind):
            found += [dataclasses.replace(inner, name=f"{item.name}.{inner.name}") for inner in leaves(kind)]
        else:
            spec = item.metadata.get("option", Option(flag=False))
            found.append(Leaf(item.name, item, kind, spec, field_docs(cls).get(item.name, "")))
    return tuple(found)


def leaf(cls: type, name: str) -> Leaf:
    """The Leaf of dotted field `name` of dataclass `cls`; KeyError if there is none."""
    return {item.name: item for item in leaves(cls)}[name]


def base_kind(kind) -> object:
    """`kind` without its `| None`."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        return next(arg for arg in typing.get_args(kind) if arg is not type(None))
    return kind


NOUNS = {int: ("an integer", "integers"), float: ("a number", "numbers"), str: ("a string", "strings"),
         bool: ("true or false", "booleans"), Path: ("a path", "paths")}  # fmt: skip


def shown(value) -> str:
    """A value as the JSON it came from ("2" with its quotes), for messages."""
    try:
        return json.dumps(value)
    except TypeError:
        return repr(value)


def _is(value, kind) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:  # bool is an int subclass, and 2.0 is not an integer here
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind is Path:
        return isinstance(value, str | Path)
    return isinstance(value, kind)


def is_repeated(kind) -> bool:
    """Whether annotation `kind` is a variadic tuple (`tuple[str, ...]`): a flag that may repeat."""
    return typing.get_origin(kind) is tuple and typing.get_args(kind)[1:] == (Ellipsis,)


def type_problem(value, kind) -> str | None:
    """Why `value` is not of annotation `kind`, e.g. 'must be an integer, got "2"' (None when it is)."""
    if value is None and kind is not base_kind(kind):
        return None
    kind = base_kind(kind)
    if is_repeated(kind):
        item = typing.get_args(kind)[0]
        if isinstance(value, tuple) and all(_is(element, item) for element in value):
            return None
        return f"must be a list of {NOUNS[item][1]}, got {shown(value)}"
    if typing.get_origin(kind) is tuple:
        items = typing.get_args(kind)
        if isinstance(value, tuple) and len(value) == len(items) and all(map(_is, value, items)):
            return None
        return f"must be a list of {len(items)} {NOUNS[items[0]][1]}, got {shown(value)}"
    return None if _is(value, kind) else f"must be {NOUNS[kind][0]}, got {shown(value)}"


def bound_problem(spec: Option, number: float) -> str | None:
    """Why `number` is outside the range of `spec`, e.g. "must be >= 1, got -1" (None when inside)."""
    if isinstance(number, float) and not math.isfinite(number):
        return f"must be a finite number, got {number}"
    if spec.low is not None and (number <= spec.low if spec.low_open else number < spec.low):
        return f"must be {'>' if spec.low_open else '>='} {spec.low}, got {number}"
    if spec.high is not None and (number >= spec.high if spec.high_open else number > spec.high):
        return f"must be {'<' if spec.high_open else '<='} {spec.high}, got {number}"
    return None


def value_problem(leaf: Leaf, value) -> str | None:
    """Why `value` cannot be the value of `leaf`: wrong type, out of range or not a choice."""
    problem = type_problem(value, leaf.kind)
    if problem or value is None:
        return problem
    if leaf.spec.choices is not None:
        wrong = [
            item for item in (value if is_repeated(leaf.kind) else (value,)) if item not in leaf.spec.choices
        ]
        if wrong:
            return f"must be one of {', '.join(leaf.spec.choices)}, got {wrong[0]!r}"
    if isinstance(value, str | bool | Path) or is_repeated(leaf.kind):  # repeated flags are str choices
        return None
    for number in value if isinstance(value, tuple) else (value,):  # a tuple's range is per element
        problem = bound_problem(leaf.spec, number)
        if problem:
            return problem
    return None


def range_text(spec: Option) -> str:
    """The range as help text, e.g. "  [>= 0, <= 1]" ("" when unbounded)."""
    parts = []
    if spec.low is not None:
        parts.append(f"{'>' if spec.low_open else '>='} {spec.low}")
    if spec.high is not None:
        parts.append(f"{'<' if spec.high_open else '<='} {spec.high}")
    return f"  [{', '.join(parts)}]" if parts else ""


class Bounded(click.ParamType):
    """An int or float flag checked against its field's range (finite, in range) before anything runs."""

    def __init__(self, kind: type, spec: Option):
        self.kind, self.spec, self.name = kind, spec, kind.__name__

    def convert(self, value, param, ctx):
        try:
            number = self.kind(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a valid {self.name}", param, ctx)
        problem = bound_problem(self.spec, number)
        if problem:
            self.fail(problem, param, ctx)
        return number


def is_required(leaf: Leaf) -> bool:
    """Whether the flag of `leaf` must be given: declared `required`, or without a default."""
    return leaf.spec.required or leaf.field.default is MISSING


def click_option(leaf: Leaf, preset_defaults: bool):
    """The click option of one flag field: --last-part-of-name, parameter name with "__" for dots."""
    name, param = leaf.name.split(".")[-1].replace("_", "-"), leaf.name.replace(".", "__")
    kind, spec = base_kind(leaf.kind), leaf.spec
    required = is_required(leaf)
    default = None if preset_defaults or required else leaf.field.default
    extra = {"required": True} if required else {"default": default, "show_default": default is not None}
    suffix = "  [default: preset's]" if preset_defaults and not required else ""
    if kind is bool:
        return click.option(f"--{name}/--no-{name}", param, help=leaf.doc + suffix, **extra)
    doc = leaf.doc
    if is_repeated(kind):  # given once per value: --task a --task b; () = none given
        extra.update(multiple=True, show_default=bool(default))
    if spec.choices is not None:
        param_type = click.Choice(spec.choices)
    elif kind in (int, float):
        param_type, doc = Bounded(kind, spec), doc + range_text(spec)
    elif kind is Path:
        param_type = click.Path(file_okay=False, path_type=Path)  # an output folder
    else:
        param_type = click.STRING
    return click.option(f"--{name}", param, type=param_type, help=doc + suffix, **extra)


def click_options(cls: type, *, preset_defaults: bool = False):
    """Decorator adding a click option for every flag field of dataclass `cls`: required ones
    first, then in field order.

    preset_defaults: every option defaults to None, "keep the preset's value" (mvm-train, whose
    preset and --config file come first); otherwise the field's default is the option's.
    """

    def decorate(command):
        flags = sorted(
            (item for item in leaves(cls) if item.spec.flag), key=lambda item: not is_required(item)
        )
        for item in reversed(flags):
            command = click_option(item, preset_defaults)(command)
        return command

    return decorate


def nest(flat: dict) -> dict:
    """{"data.batch_size": 4, "steps": 1} -> {"data": {"batch_size": 4}, "steps": 1}."""
    out: dict = {}
    for name, value in flat.items():
        *sections, last = name.split(".")
        target = out
        for section in sections:
            target = target.setdefault(section, {})
        target[last] = value
    return out
