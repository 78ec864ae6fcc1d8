"""Read params.yaml once, at a stage's edge, and validate the sections it uses (rules: segpipe/core/schema.py).

A stage does `params = Params(args.params)`, then `params.section("train")` and `params.shared("seed")`,
and unpacks the values into keyword arguments.
"""
from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from segpipe.core.schema import SECTIONS, SHARED


class DuplicateKeyError(yaml.YAMLError):
    """The same key twice in one mapping of params.yaml."""


class ParamsLoader(yaml.SafeLoader):
    """yaml.SafeLoader that reads scalars as YAML 1.2 does, as DVC reads the same file (`dvc exp run -S`,
    `dvc params diff`), and refuses a key given twice.

    PyYAML follows YAML 1.1, where `1e-3` is text (a float needs a dot), `no`, `off`, `yes` and `on` are
    booleans (class_names: [no, yes] would be [False, True]), `010` is 8 and `1:30` is 90: here they are a
    float, text, 10 and text, as in YAML 1.2 and in DVC. A key given twice would keep the last value
    silently (an edit to the first would not count): it is an error naming the key and both lines."""

    yaml_implicit_resolvers = {}  # filled below with YAML 1.2's core schema, not inherited from SafeLoader

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *defaults` brings keys that the mapping's own may override
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise DuplicateKeyError(f"key '{key}' is given twice in one mapping, at line {seen[key]} and "
                                        f"line {line}")
            seen.setdefault(key, line)
        return super().construct_mapping(node, deep=deep)


for _tag, _pattern, _first in (
        ("tag:yaml.org,2002:bool", r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
        ("tag:yaml.org,2002:int", r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", "-+0123456789"),
        ("tag:yaml.org,2002:float", r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
                                    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$", "-+0123456789."),
        ("tag:yaml.org,2002:null", r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
        ("tag:yaml.org,2002:merge", r"^(?:<<)$", "<")):
    ParamsLoader.add_implicit_resolver(_tag, re.compile(_pattern), list(_first))
ParamsLoader.add_constructor(  # YAML 1.2: 010 is ten (1.1 read it as octal 8); 0o10 and 0x10 keep their base
    "tag:yaml.org,2002:int", lambda loader, node: int(loader.construct_scalar(node), 0)
    if loader.construct_scalar(node).lstrip("+-").startswith(("0o", "0x")) else int(loader.construct_scalar(node)))


def read_params(path: Path) -> dict:
    """Returns the whole params.yaml as a dict; a clear error if it is missing or not a mapping."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"params file '{path}' not found; expected a params.yaml (run from the repo root).")
    try:
        with open(path, encoding="utf-8") as fh:
            params = yaml.load(fh, Loader=ParamsLoader)  # noqa: S506 (a SafeLoader: see ParamsLoader)
    except DuplicateKeyError as err:
        raise ValueError(f"params file '{path}': {err}; a YAML reader keeps only one of them, so an edit to "
                         "the other would be ignored: delete one.") from None
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        raise ValueError(f"params file '{path}' is not valid YAML{at}: {getattr(err, 'problem', None) or err}; "
                         "fix the syntax (git diff params.yaml shows what changed).") from None
    if not isinstance(params, dict):
        raise ValueError(f"params file '{path}' must be a YAML mapping of sections, got {type(params).__name__}.")
    unknown = sorted(set(params) - set(SECTIONS) - set(SHARED))
    if unknown:
        raise ValueError(f"params file '{path}' has an unknown top-level key '{unknown[0]}'"
                         f"{did_you_mean(unknown[0], [*SECTIONS, *SHARED])}; expected the sections "
                         f"{sorted(SECTIONS)} and the shared keys {sorted(SHARED)}.")
    return params


def did_you_mean(name: str, known) -> str:
    """` (did you mean 'x'?)` with the closest of `known` to a mistyped `name`, or "" when none is close."""
    close = difflib.get_close_matches(str(name), list(known), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


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
    if not ok and bool in kinds and isinstance(value, str) and value.lower() in ("yes", "no", "on", "off", "y", "n"):
        hint = (f"Write true or false: params.yaml is read as YAML 1.2 (as DVC reads it), where {value} is text. "
                + hint).strip()
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


class Params:
    """params.yaml, read once at a stage's edge; `section` and `shared` validate what a stage uses.

    Rules come from segpipe/core/schema.py. Validation is strict on purpose: a typo (`valid_fraciton`) must
    fail loudly, not silently fall back to a default.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.values = read_params(self.path)

    def section(self, name: str) -> dict:
        """The section `name` as a plain dict with exactly the schema's keys, each checked."""
        schema = SECTIONS[name]
        if name not in self.values:
            raise ValueError(f"params file '{self.path}' has no '{name}' section; expected keys: {sorted(schema)}.")
        values = self.values[name]
        if not isinstance(values, dict):
            raise ValueError(f"'{name}' in '{self.path}' must be a mapping, got {values!r}.")
        missing = sorted(set(schema) - set(values))
        unknown = sorted(set(values) - set(schema), key=str)
        if len(unknown) == 1 and len(missing) <= 1:
            raise ValueError(f"unknown key '{unknown[0]}' in section '{name}' of '{self.path}'"
                             + (f" (did you mean '{missing[0]}'?)" if missing else did_you_mean(unknown[0], schema))
                             + f"; expected exactly {sorted(schema)}.")
        if missing or unknown:
            raise ValueError(f"section '{name}' of '{self.path}': missing keys {missing}, unknown keys {unknown}; "
                             f"expected exactly {sorted(schema)}.")
        return {key: check_value(f"{name}.{key}", values[key], **rules) for key, rules in schema.items()}

    def shared(self, name: str) -> Any:
        """One shared top-level param such as `seed` or `num_classes`, checked."""
        if name not in self.values:
            raise ValueError(f"params file '{self.path}' has no top-level '{name}'.")
        return check_value(name, self.values[name], **SHARED[name])

    def class_names(self) -> list[str]:
        """Every class's display name in class-id order, from `class_names` (checked against num_classes).

        Binary tasks (num_classes: 1) have two classes, background then foreground; `class_names` may name the
        foreground alone ([lesion]). Null gives background/foreground, or class_0, class_1, ...
        """
        num_classes = self.shared("num_classes")
        names = self.shared("class_names")
        if names is None:
            return ["background", "foreground"] if num_classes == 1 else [f"class_{k}" for k in range(num_classes)]
        if len(names) != num_classes:
            raise ValueError(f"param 'class_names' has {len(names)} name(s) but num_classes is {num_classes}; give "
                             + ("one name (the foreground's) for a binary task" if num_classes == 1 else
                                "one name per class, in class-id order") + ", or null.")
        if len(set(names)) != len(names):
            raise ValueError(f"param 'class_names' repeats a name ({names}); each class needs its own.")
        return ["background", *names] if num_classes == 1 else list(names)
