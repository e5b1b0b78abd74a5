"""Every ``--set`` field of every registered experiment has a documentation line in ``rlhf-bandits show``.

``experiments.engine.config.field_docs`` reads the docstrings of a config class, its bases and its nested
configs. A dataclass written without a docstring gets a generated one, ``Config(name: 'type' = default,
...)``, which ``field_docs`` skips (it used to read it as documentation, ``'float' = -0.8,``); a config
class in the tree must carry a written docstring as well.
"""
from __future__ import annotations

import dataclasses
import inspect

import pytest

from experiments.engine import registry
from experiments.engine.config import describe_fields, field_docs, settable_fields

NAMES = registry.names()


def _generated_docstring(cls: type) -> bool:
    """Whether ``cls`` has no docstring of its own or only the signature ``dataclasses`` writes for it."""
    doc = cls.__dict__.get("__doc__")
    return doc is None or doc == cls.__name__ + str(inspect.signature(cls)).replace(" -> None", "")


def _config_classes(cls: type, seen: dict[type, None] | None = None) -> list[type]:
    """The dataclasses whose docstrings ``field_docs`` reads for ``cls``: its dataclass bases and, recursively,
    those of its nested config fields."""
    seen = {} if seen is None else seen
    for klass in cls.__mro__:
        if dataclasses.is_dataclass(klass) and klass not in seen:
            seen[klass] = None
    for field in dataclasses.fields(cls):
        value = field.default
        if dataclasses.is_dataclass(value) and type(value) not in seen:
            _config_classes(type(value), seen)
    return list(seen)


def _config_type(name: str) -> type:
    return type(next(iter(registry.get(name).presets.values())))


@dataclasses.dataclass(frozen=True)
class _Inner:
    """``width``: the width."""

    width: int = 1


@dataclasses.dataclass(frozen=True)
class _Bare:
    inner: _Inner = _Inner()
    rate: float = 0.5


@dataclasses.dataclass(frozen=True)
class _Written(_Bare):
    """``rate``: the step size ``> 0``."""


def test_the_generated_docstring_check_tells_written_from_generated():
    assert _generated_docstring(_Bare) and not _generated_docstring(_Inner) and not _generated_docstring(_Written)
    assert set(_config_classes(_Written)) == {_Written, _Bare, _Inner}
    assert "rate" not in field_docs(_Bare)   # the generated signature is not read as documentation
    assert field_docs(_Written)["rate"] == "the step size ``> 0``"
    assert field_docs(_Written)["inner.width"] == "the width"


@pytest.mark.parametrize("name", NAMES)
def test_every_field_of_the_experiment_is_documented(name):
    presets = registry.get(name).presets
    rows = describe_fields(presets)
    assert [row["path"] for row in rows] == settable_fields(next(iter(presets.values())))
    missing = [row["path"] for row in rows if not row["doc"].strip()]
    assert missing == [], f"{name}: fields without documentation in its Config docstrings: {', '.join(missing)}"


@pytest.mark.parametrize("name", NAMES)
def test_every_config_class_of_the_experiment_has_a_written_docstring(name):
    bare = [f"{k.__module__}.{k.__qualname__}" for k in _config_classes(_config_type(name)) if _generated_docstring(k)]
    assert bare == [], (f"{name}: config classes without a docstring (field_docs would read their generated "
                        f"signature as documentation): {', '.join(bare)}")


def test_field_docs_skips_the_generated_signature():
    """A bare dataclass documents nothing of its own: only its nested config's written entry is found."""
    assert field_docs(_Bare) == {"inner.width": "the width"}
    assert field_docs(_Written)["rate"] == "the step size ``> 0``"
