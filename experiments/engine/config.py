"""Typed ``field=value`` overrides of frozen dataclass configs, and config <-> dict conversion.

``apply_overrides(config, ["n_samples=64", "instance.kl_coef=0.1", "sizes=16,64,256"])`` parses each
value from the field's annotation and rebuilds the (nested) frozen dataclasses, so each config's own
``__post_init__`` validates the result. Supported annotations: ``int``, ``float``, ``bool``, ``str``,
``Literal[...]``, ``tuple[T, ...]`` / ``tuple[T1, T2]`` of those (written ``1,2,3`` or ``(1,2,3)``),
``T | None`` (written ``none``) and nested dataclasses (set through dotted paths).

Short names: a field of a nested config can also be set by its own name when that name is unique in
the whole config tree and is not a top-level field (``kl_coef=0.1`` for ``instance.kl_coef=0.1``,
``lam=2`` for ``confidence.lam=2``; ``short_names``). A name shared by two nested configs must be
written in full; the error lists both paths. ``replace(config, kl_coef=0.1, iterations=8)`` is the
programmatic form (presets use it), and ``config_from_dict`` reads older flat records the same way.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from typing import Any, Literal, Mapping, Sequence

__all__ = ["apply_overrides", "check_unused", "config_from_dict", "config_hash", "config_to_dict", "field_value",
           "parse_value", "replace", "settable_fields", "short_names"]

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


class _Unparsable(Exception):
    pass


def _is_config(value: Any) -> bool:
    return dataclasses.is_dataclass(value)


def _fields(cls: type) -> dict[str, tuple[dataclasses.Field, Any]]:
    hints = typing.get_type_hints(cls)
    return {f.name: (f, hints.get(f.name, Any)) for f in dataclasses.fields(cls) if f.init}


def settable_fields(config: Any, prefix: str = "") -> list[str]:
    """Every dotted path ``--set`` accepts for ``config`` (an instance or a dataclass type)."""
    cls = config if isinstance(config, type) else type(config)
    out = []
    for name, (_, tp) in _fields(cls).items():
        sub = getattr(config, name, None) if not isinstance(config, type) else None
        if _is_config(sub) or (isinstance(tp, type) and dataclasses.is_dataclass(tp)):
            out.extend(settable_fields(sub if sub is not None else tp, f"{prefix}{name}."))
        else:
            out.append(prefix + name)
    return out


def field_value(config: Any, path: str) -> Any:
    """The value at dotted ``path`` of a (nested) config, e.g. ``instance.kl_coef``."""
    node = config
    for part in path.split("."):
        node = getattr(node, part)
    return node


def _leaf_paths(cls: type, prefix: str = "") -> list[str]:
    out = []
    for name, (_, tp) in _fields(cls).items():
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            out.extend(_leaf_paths(tp, f"{prefix}{name}."))
        else:
            out.append(prefix + name)
    return out


def short_names(config: Any) -> dict[str, str | tuple[str, ...]]:
    """``{short name: dotted path}`` for the nested fields of ``config`` (an instance or a type) whose
    name is unique and not a top-level field; an ambiguous name maps to the tuple of its paths."""
    cls = config if isinstance(config, type) else type(config)
    top = set(_fields(cls))
    paths: dict[str, list[str]] = {}
    for path in _leaf_paths(cls):
        if "." in path:
            paths.setdefault(path.rsplit(".", 1)[1], []).append(path)
    return {name: (p[0] if len(p) == 1 else tuple(p)) for name, p in paths.items() if name not in top}


def _resolve(path: str, config: Any) -> str:
    """The dotted path of ``path`` (itself unless it is a short name of a nested field)."""
    if "." in path or path in _fields(type(config)):
        return path
    target = short_names(config).get(path)
    if isinstance(target, tuple):
        raise ValueError(f"field {path!r} is ambiguous in {type(config).__name__}: write one of "
                         f"{', '.join(target)}.")
    return target or path


def field_docs(cls: type) -> dict[str, str]:
    """One line of documentation per field, from the docstrings of ``cls``, its bases and its nested configs.

    A field's entry starts where its name is followed by a colon (``lam: the ridge of the MLE``; several
    names share one entry as ``a, b: ...``) and runs to the next field's entry, or to the end of the
    sentence when prose follows; ``;`` and ``.`` both separate entries. The signature that ``dataclasses``
    puts in place of a missing docstring is not documentation and is skipped.
    """
    import re

    out: dict[str, str] = {}
    fields = _fields(cls)
    for name, (_, tp) in fields.items():
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            out.update({f"{name}.{k}": v for k, v in field_docs(tp).items()})
    name = "|".join(sorted(map(re.escape, fields), key=len, reverse=True))
    if not name:
        return out
    entry = re.compile(rf"(?:^|(?<=[\s(]))((?:``)?(?:{name})(?:``)?(?:, (?:``)?(?:{name})(?:``)?)*): ")
    for klass in cls.__mro__:
        doc = " ".join((klass.__dict__.get("__doc__") or "").split())
        if dataclasses.is_dataclass(klass) and doc.startswith(klass.__name__ + "("):
            continue   # the signature dataclasses writes for a class without a docstring documents nothing
        found = list(entry.finditer(doc))
        for i, match in enumerate(found):
            text = doc[match.end():found[i + 1].start() if i + 1 < len(found) else len(doc)]
            text = re.split(r"(?<=[.;])\s+(?=[A-Z])", text)[0].strip().rstrip(".;").strip()
            for field in match.group(1).replace("`", "").split(", "):
                if text and field not in out:
                    out[field] = text
    return out


# Fields every experiment may declare, documented once here (an experiment's own docstring wins).
COMMON_FIELD_DOCS = {
    "seed": "the root seed: seed i of a run draws from fold_in(key(seed), i), whatever the seed count, chunking "
            "or devices (common random numbers across algorithms)",
    "chunk_size": "seeds per compiled batch (a chunk that does not fit in memory is halved automatically); "
                  "results do not depend on it",
}


def describe_fields(presets: Mapping[str, Any]) -> list[dict[str, Any]]:
    """For ``rlhf-bandits show``: every settable field of an experiment's presets with its short name,
    type, default per preset and documentation line."""
    first = next(iter(presets.values()))
    short = {p: s for s, p in short_names(first).items() if isinstance(p, str)}
    docs = field_docs(type(first))
    rows = []
    for path in settable_fields(first):
        node, parts = type(first), path.split(".")
        for part in parts[:-1]:
            node = _fields(node)[part][1]
        tp = _fields(node)[parts[-1]][1]
        values = {}
        for preset, config in presets.items():
            value = config
            for part in parts:
                value = getattr(value, part)
            values[preset] = value
        rows.append({"path": path, "name": short.get(path, path), "type": describe_type(tp), "defaults": values,
                     "doc": docs.get(path) or docs.get(parts[-1]) or COMMON_FIELD_DOCS.get(path, "")})
    return rows


def _union_args(tp: Any) -> tuple | None:
    origin = typing.get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:
        return typing.get_args(tp)
    return None


def describe_type(tp: Any) -> str:
    """Human words for an annotation, used in error messages."""
    if tp is bool:
        return "a boolean (true/false)"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(c) for c in typing.get_args(tp))
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a comma-separated tuple of ({describe_type(args[0])}), e.g. 1,2,3"
        return f"a tuple of {len(args)} values ({', '.join(describe_type(a) for a in args)})"
    union = _union_args(tp)
    if union is not None:
        return " or ".join("none" if a is type(None) else describe_type(a) for a in union)
    return getattr(tp, "__name__", repr(tp))


def _parse(text: str, tp: Any) -> Any:
    text = text.strip()
    if tp is Any:
        return text
    if tp is bool:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise _Unparsable
    if tp is int:
        try:
            return int(text)
        except ValueError:
            pass
        try:
            x = float(text)  # "1e4" is a fine way to write 10000
        except ValueError:
            raise _Unparsable from None
        if not x.is_integer() or abs(x) > 2**53:
            raise _Unparsable
        return int(x)
    if tp is float:
        try:
            return float(text)
        except ValueError:
            raise _Unparsable from None
    if tp is str:
        if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
            text = text[1:-1]
        return text
    if typing.get_origin(tp) is Literal:
        for choice in typing.get_args(tp):
            try:
                if _parse(text, type(choice)) == choice:
                    return choice
            except _Unparsable:
                continue
        raise _Unparsable
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        if text[:1] + text[-1:] in ("()", "[]"):
            text = text[1:-1]
        items = [t for t in (s.strip() for s in text.split(",")) if t] if text.strip() else []
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_parse(t, args[0]) for t in items)
        if len(items) != len(args):
            raise _Unparsable
        return tuple(_parse(t, a) for t, a in zip(items, args))
    union = _union_args(tp)
    if union is not None:
        if type(None) in union and text.lower() in ("none", "null"):
            return None
        for arg in union:
            if arg is type(None):
                continue
            try:
                return _parse(text, arg)
            except _Unparsable:
                continue
        raise _Unparsable
    raise _Unparsable


def parse_value(field: str, text: str, tp: Any) -> Any:
    """Parse ``text`` as annotation ``tp``; ``ValueError`` names the field, the value and the type."""
    try:
        return _parse(text, tp)
    except _Unparsable:
        raise ValueError(f"cannot set {field}={text!r}: expected {describe_type(tp)}.") from None


def _split(override: str) -> tuple[str, str]:
    if "=" not in override:
        raise ValueError(f"override {override!r} must look like field=value (e.g. seed=3).")
    path, text = override.split("=", 1)
    path = path.strip()
    if not path:
        raise ValueError(f"override {override!r} must look like field=value (e.g. seed=3).")
    return path, text


def _unknown(path: str, config: Any, prefix: str) -> ValueError:
    short = {p: s for s, p in short_names(config).items() if isinstance(p, str)} if not prefix else {}
    allowed = [f"{short[p]} ({p})" if p in short else p for p in settable_fields(config, prefix)]
    return ValueError(f"unknown field {path!r} for {type(config).__name__}; allowed fields: "
                      f"{', '.join(allowed)}.")


def apply_overrides(config: Any, overrides: Sequence[str]) -> Any:
    """A copy of frozen dataclass ``config`` with ``field=value`` overrides (dotted for nesting).

    All overrides are parsed first, then each dataclass is rebuilt once (so cross-field checks in
    ``__post_init__`` see every new value together). Later duplicates win. Raises ``ValueError`` for
    a malformed override, an unknown field (listing the allowed ones), an unparsable value (naming
    the field, value and expected type) and a rejected config (carrying ``__post_init__``'s message).
    """
    changes: dict[str, Any] = {}
    for override in overrides:
        path, text = _split(override)
        path = _resolve(path, config)
        parts = path.split(".")
        node, node_changes, prefix = config, changes, ""
        for i, part in enumerate(parts):
            fields = _fields(type(node))
            if part not in fields:
                raise _unknown(path, config, "") if i == 0 else _unknown(path, node, prefix)
            value = getattr(node, part)
            last = i == len(parts) - 1
            if _is_config(value):
                if last:
                    sub = settable_fields(value, f"{path}.")
                    raise ValueError(f"{path} is a nested config: set its fields instead, e.g. "
                                     f"{sub[0]}=... (allowed: {', '.join(sub)}).")
                node_changes = node_changes.setdefault(part, {})
                node, prefix = value, f"{prefix}{part}."
            elif not last:
                raise ValueError(f"{prefix}{part} is not a nested config, so {path!r} does not exist.")
            else:
                node_changes[part] = (parse_value(path, text, fields[part][1]), f"{path}={text}")
    return _rebuild(config, changes)


def _texts(changes: Mapping[str, Any]) -> list[str]:
    out = []
    for change in changes.values():
        out.extend(_texts(change) if isinstance(change, dict) else [change[1]])
    return out


def _rebuild(config: Any, changes: Mapping[str, Any]) -> Any:
    kwargs, shown = {}, _texts(changes)
    for name, change in changes.items():
        if isinstance(change, dict):
            kwargs[name] = _rebuild(getattr(config, name), change)
        else:
            kwargs[name] = change[0]
    try:
        return dataclasses.replace(config, **kwargs)
    except (ValueError, TypeError, AssertionError) as err:
        raise ValueError(f"invalid {type(config).__name__} after {', '.join(shown)}: {err}") from err


def replace(config: Any, **changes: Any) -> Any:
    """``dataclasses.replace`` through nested configs: keys are field names, short names or dotted paths
    written with ``__`` for ``.`` (``instance__kl_coef=0.1``); every rebuilt config is validated."""
    nested: dict[str, Any] = {}
    for key, value in changes.items():
        path = _resolve(key.replace("__", "."), config)
        node, parts = nested, path.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return _replace_nested(config, nested)


def _replace_nested(config: Any, nested: Mapping[str, Any]) -> Any:
    fields = _fields(type(config))
    kwargs = {}
    for name, value in nested.items():
        if name not in fields:
            raise _unknown(name, config, "")
        kwargs[name] = _replace_nested(getattr(config, name), value) if isinstance(value, dict) else value
    return dataclasses.replace(config, **kwargs)


def check_unused(config: Any, paths: Sequence[str], why: str) -> None:
    """Refuse a value on a nested field that this config does not read (e.g. ``instance.kl_coef`` when
    the experiment sweeps its own grid): each dotted path must keep its declared default, or a
    ``ValueError`` names the field, the value and ``why``. Call it from the config's ``__post_init__``."""
    defaults = {f.name: f.default for f in dataclasses.fields(type(config))}
    for path in paths:
        head, *rest = path.split(".")
        value, default = getattr(config, head), defaults[head]
        for part in rest:
            value, default = getattr(value, part), getattr(default, part)
        if value != default:
            name = path.rsplit(".", 1)[-1]
            raise ValueError(f"{name}={value!r} is not allowed: {why}, so {path} is not read; leave it at "
                             f"{default!r}.")


def config_to_dict(config: Any) -> dict[str, Any]:
    """Nested plain dict of a (nested) dataclass config (tuples stay tuples; JSON makes them lists)."""
    return dataclasses.asdict(config)


def _coerce(field: str, value: Any, tp: Any, base: Any = None) -> Any:
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ValueError(f"{field} must be a mapping for {tp.__name__}, got {value!r}.")
        return config_from_dict(tp, value, prefix=f"{field}.", base=base)
    if typing.get_origin(tp) is tuple and isinstance(value, (list, tuple)):
        args = typing.get_args(tp)
        elems = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args)
        if len(elems) != len(value):
            raise ValueError(f"{field}={value!r}: expected {describe_type(tp)}.")
        return tuple(_coerce(f"{field}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, elems)))
    union = _union_args(tp)
    if union is not None:
        if value is None and type(None) in union:
            return None
        for arg in union:
            if arg is not type(None):
                try:
                    return _coerce(field, value, arg)
                except ValueError:
                    continue
        raise ValueError(f"{field}={value!r}: expected {describe_type(tp)}.")
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, bool, str) and not (type(value) is tp):
        raise ValueError(f"{field}={value!r}: expected {describe_type(tp)}.")
    return value


def config_from_dict(cls: type, data: Mapping[str, Any], prefix: str = "", base: Any = None) -> Any:
    """Rebuild a config of type ``cls`` from ``config_to_dict``/JSON output.

    Missing keys take the value of ``base`` (for a nested config: the default the enclosing config
    declares for it), else the class default. A flat key that is a short name of a nested field (a
    record written before that field moved into a nested config) is read into its nested config; a key
    in the class's ``RENAMED_FIELDS`` (``{old name: new name}``) is read under its new name."""
    fields = _fields(cls)
    renamed = getattr(cls, "RENAMED_FIELDS", {})
    if renamed:
        data = {renamed.get(k, k): v for k, v in data.items()}
    if not prefix:
        short = short_names(cls)
        moved = {k: short[k] for k in data if k not in fields and isinstance(short.get(k), str)}
        if moved:
            flat, data = data, {k: v for k, v in data.items() if k not in moved}
            for key, path in moved.items():
                node = data
                for part in path.split(".")[:-1]:
                    node[part] = dict(node.get(part, {}))
                    node = node[part]
                node[path.rsplit(".", 1)[1]] = flat[key]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(prefix + u for u in unknown)} for {cls.__name__}; "
                         f"allowed fields: {', '.join(prefix + f for f in fields)}.")
    kwargs = {}
    for k, v in data.items():
        field, tp = fields[k]
        nested_base = getattr(base, k) if base is not None else (
            field.default if dataclasses.is_dataclass(field.default) else None)
        kwargs[k] = _coerce(prefix + k, v, tp, nested_base)
    return dataclasses.replace(base, **kwargs) if base is not None else cls(**kwargs)


def config_hash(*parts: Any) -> str:
    """Short stable hash of JSON-able parts (configs are converted with ``config_to_dict``)."""
    def plain(x):
        return config_to_dict(x) if dataclasses.is_dataclass(x) and not isinstance(x, type) else x

    text = json.dumps([plain(p) for p in parts], sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
