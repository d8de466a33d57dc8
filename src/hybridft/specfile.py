"""Load a YAML file into a pydantic model, mapping every error back to file:line:key.

pydantic reports a location as a tuple of keys and indices; YAML's composer keeps the line of every
node. Walking both together turns ``('stages', 1, 'mix', 0, 'weight')`` into
``jobs/x.yaml:12: stages[1].mix[0].weight: expected a number >= 0, got "lots"``.
"""

from __future__ import annotations

import difflib
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import annotated_types
import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from hybridft.errors import UserError, located

M = TypeVar("M", bound=BaseModel)


def key_path(loc: tuple[Any, ...]) -> str:
    """``('stages', 1, 'mix')`` -> ``stages[1].mix``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _node_line(root: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """1-based line of the deepest YAML node reachable along ``loc``."""
    node, line = root, (root.start_mark.line + 1 if root is not None else None)
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if key_node.value == part:
                    line, node = key_node.start_mark.line + 1, value_node
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                return line
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def _unwrap(annotation: Any) -> list[Any]:
    """The concrete types inside Optional / Union / Annotated."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [t for a in typing.get_args(annotation) for t in _unwrap(a)]
    return [annotation]


def _walk(model: type[BaseModel], loc: tuple[Any, ...]) -> tuple[Any, Any]:
    """(FieldInfo of the last model field on ``loc``, the type at the end of ``loc``)."""
    current: Any = model
    info = None
    for part in loc:
        if isinstance(part, int):
            args = [a for t in _unwrap(current) for a in typing.get_args(t)]
            current = args[-1] if args else None
            continue
        models = [t for t in _unwrap(current) if isinstance(t, type) and issubclass(t, BaseModel)]
        dict_args = [typing.get_args(t) for t in _unwrap(current) if typing.get_origin(t) is dict]
        if models and part in models[0].model_fields:
            info = models[0].model_fields[part]
            current = info.annotation
        elif dict_args:
            current = dict_args[0][1]  # a user-named key of a mapping: its value type
        else:
            return None, None
    return info, current


def _field_info(model: type[BaseModel], loc: tuple[Any, ...]) -> Any:
    """FieldInfo of the field at ``loc`` (best effort; None when the path leaves models)."""
    return _walk(model, loc)[0]


def _bounds(info: Any) -> str:
    if info is None:
        return ""
    parts = []
    for meta in getattr(info, "metadata", []):
        for attr, sym in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            if isinstance(meta, getattr(annotated_types, attr.capitalize())):
                parts.append(f"{sym} {getattr(meta, attr)}")
    return " " + " and ".join(parts) if parts else ""


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    _, target = _walk(model, loc[:-1])
    for t in _unwrap(target):
        if isinstance(t, type) and issubclass(t, BaseModel):
            return sorted(t.model_fields)
    return []


def _found(value: Any) -> str:
    try:
        return json.dumps(value, default=str)
    except (TypeError, ValueError):
        return repr(value)


def describe_error(model: type[BaseModel], err: ErrorDetails) -> tuple[str, str]:
    """(key path, 'expected X, got Y') for one pydantic error dict."""
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    kind, ctx = err["type"], err.get("ctx") or {}
    got = _found(err.get("input"))
    info = _field_info(model, loc)
    if kind == "extra_forbidden":
        name = str(loc[-1])
        allowed = _allowed_keys(model, loc)
        close = difflib.get_close_matches(name, allowed, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return key_path(loc), f"unknown key{hint}; expected one of {', '.join(allowed)}"
    if kind == "missing":
        return key_path(loc), "required key is missing"
    expected = {
        "float_parsing": "a number",
        "float_type": "a number",
        "int_parsing": "an integer",
        "int_type": "an integer",
        "int_from_float": "an integer",
        "bool_parsing": "true or false",
        "bool_type": "true or false",
        "string_type": "a string",
        "list_type": "a list",
        "dict_type": "a mapping",
        "model_type": "a mapping",
        "model_attributes_type": "a mapping",
    }.get(kind)
    if expected in ("a number", "an integer"):
        expected += _bounds(info)
    elif kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        whole = info is not None and int in _unwrap(info.annotation)
        expected = ("an integer" if whole else "a number") + (_bounds(info) or f" ({err['msg']})")
    elif kind == "literal_error":
        expected = f"one of {ctx.get('expected', '')}"
    elif kind == "enum":
        expected = f"one of {ctx.get('expected', '')}"
    elif kind in ("too_short", "too_long"):
        expected = err["msg"].replace("List should have", "a list with").replace("Value", "a list")
    elif kind == "value_error":
        return key_path(loc), str(ctx.get("error", err["msg"])).removeprefix("Value error, ")
    elif expected is None:
        expected = err["msg"][0].lower() + err["msg"][1:]
    return key_path(loc), f"expected {expected}, got {got}"


def load_yaml_model(path: str | Path, model: type[M], context: dict[str, Any] | None = None) -> M:
    """Parse ``path`` into ``model``; any problem is a one-line UserError naming file:line:key."""
    path = Path(path)
    shown = str(path)
    if not path.is_file():
        raise UserError(f"{shown}: file not found")
    text = path.read_text(encoding="utf-8")
    try:
        root = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        raise located(shown, line, "", f"invalid YAML: {exc.problem}") from None
    if not isinstance(data, dict):
        raise located(shown, 1, "", f"expected a mapping at the top, got {type(data).__name__}")
    try:
        return model.model_validate(data, context={"file": shown, **(context or {})})
    except ValidationError as exc:
        # A typo'd key also makes the intended key "missing": report the typo, the real cause.
        errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
        first = errors[0]
        key, problem = describe_error(model, first)
        loc = tuple(p for p in first["loc"] if not (isinstance(p, str) and "-" in p))
        more = len(exc.errors()) - 1
        suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
        raise located(shown, _node_line(root, loc), key, problem + suffix) from None


def line_of(path: str | Path, loc: tuple[Any, ...]) -> int | None:
    """Line of ``loc`` in a YAML file, for errors found after validation (cross-field checks)."""
    try:
        return _node_line(yaml.compose(Path(path).read_text(encoding="utf-8")), loc)
    except (OSError, yaml.YAMLError):
        return None
