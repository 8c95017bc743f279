"""One rule for every small config (model, engine, feature build, train, tune, promote): a dict
from a file, `--set key=value` flags or the environment becomes the dataclass's fields, coerced to
their types; an unknown key is an error that names the known ones, never a silent default.
"""

from __future__ import annotations

import dataclasses
from typing import Any


def strict_fields(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """`values` checked against the dataclass `cls`'s fields and coerced to their types (strings
    from `--set key=value` or the environment become int/float/bool): the one rule every small
    config follows. Unknown keys are an error naming the known ones, never a silent default."""
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(
            f"unknown config key(s) for {cls.__name__}: {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    return {key: _coerce(raw, known[key].type, key) for key, raw in values.items()}


def _coerce(raw: Any, annotation: Any, key: str) -> Any:
    """Turn `--set key=value` strings into the field's type ('int', 'float', 'bool', 'str')."""
    if not isinstance(raw, str):
        return raw
    name = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    try:
        if name.startswith("int"):
            return int(raw)
        if name.startswith("float"):
            return float(raw)
        if name.startswith("bool"):
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
    except ValueError:
        raise ValueError(f"config key {key!r} expects {name}, got {raw!r}") from None
    return raw
