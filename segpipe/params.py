"""Read params.yaml once, at a stage's edge, and validate the sections it uses.

Each stage calls `load_section(path, "convert", schema)` and unpacks the returned dict into keyword
arguments. Validation is strict on purpose: a typo in params.yaml (`valid_fraciton`) must fail loudly,
not silently fall back to a default.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import yaml


def read_params(path: Path) -> dict:
    """Returns the whole params.yaml as a dict; a clear error if it is missing or not a mapping."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"params file '{path}' not found; expected a params.yaml (run from the repo root).")
    with open(path, encoding="utf-8") as fh:
        params = yaml.safe_load(fh)
    if not isinstance(params, dict):
        raise ValueError(f"params file '{path}' must be a YAML mapping of sections, got {type(params).__name__}.")
    return params


def flatten(values: dict, prefix: str = "") -> dict:
    """{"train": {"loss": {"bce": 1}}} -> {"train.loss.bce": 1}; an empty mapping stays a value."""
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def check_value(name: str, value: Any, *, kind: type | tuple, choices=None, minimum=None, maximum=None,
                check: Callable[[Any], bool] | None = None, hint: str = "") -> Any:
    """Returns `value` if it has the expected type and range, else raises ValueError naming the param."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    # bool is an int subclass in Python; `epochs: true` must not pass as an int.
    if isinstance(value, bool) and bool not in kinds:
        ok = False
    elif float in kinds and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    else:
        ok = isinstance(value, kinds)
    expected = " or ".join(k.__name__ for k in kinds)
    if not ok:
        raise ValueError(f"param '{name}' must be {expected}, got {value!r} ({type(value).__name__}). {hint}".strip())
    if choices is not None and value not in choices:
        raise ValueError(f"param '{name}' must be one of {list(choices)}, got {value!r}. {hint}".strip())
    if minimum is not None and value < minimum:
        raise ValueError(f"param '{name}' must be >= {minimum}, got {value!r}. {hint}".strip())
    if maximum is not None and value > maximum:
        raise ValueError(f"param '{name}' must be <= {maximum}, got {value!r}. {hint}".strip())
    if check is not None and not check(value):
        raise ValueError(f"param '{name}' has an invalid value {value!r}. {hint}".strip())
    return value


def load_section(path: Path, section: str, schema: dict[str, dict]) -> dict:
    """Reads `section` of params.yaml and validates it against `schema`.

    Args:
        path: the params.yaml path.
        section: top-level key, e.g. "convert".
        schema: {key: keyword arguments of `check_value` (kind=..., choices=..., ...)}; every key is required.

    Returns:
        The section as a plain dict with exactly the schema's keys.
    """
    params = read_params(path)
    if section not in params:
        raise ValueError(f"params file '{path}' has no '{section}' section; expected keys: {sorted(schema)}.")
    values = params[section]
    if not isinstance(values, dict):
        raise ValueError(f"'{section}' in '{path}' must be a mapping, got {values!r}.")
    missing = sorted(set(schema) - set(values))
    unknown = sorted(set(values) - set(schema))
    if missing or unknown:
        raise ValueError(
            f"section '{section}' of '{path}': missing keys {missing}, unknown keys {unknown}; "
            f"expected exactly {sorted(schema)}.")
    return {key: check_value(f"{section}.{key}", values[key], **rules) for key, rules in schema.items()}


def load_shared(path: Path, name: str, **rules) -> Any:
    """Reads and validates one shared top-level param such as `seed` or `num_classes`."""
    params = read_params(path)
    if name not in params:
        raise ValueError(f"params file '{path}' has no top-level '{name}'.")
    return check_value(name, params[name], **rules)
