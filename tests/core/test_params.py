"""segpipe/core/params.py: params.yaml is read as DVC reads it (YAML 1.2), and a key given twice is an error."""
from __future__ import annotations

import pytest
import yaml
from dvc.utils.serialize import parse_yaml

from segpipe.core.params import Params, ParamsLoader, read_params

TRAPS = """\
seed: 010
class_names: [no, yes, off, on, y, n, NO]
train:
  learning_rate: 1e-3
  weight_decay: 5E-4
  warmup: 1.
  time: 1:30
  hex: 0x1F
  octal: 0o17
  date: 2020-01-01
  flag: True
  nothing: ~
  infinite: .inf
"""


def test_params_read_as_dvc_reads_them(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(TRAPS)
    ours = yaml.load(TRAPS, Loader=ParamsLoader)  # the loader alone: read_params also checks section names
    dvc = parse_yaml(TRAPS, str(path))
    assert ours == {**dvc, "train": {**dvc["train"], "date": "2020-01-01"}}  # ruamel has YAML 1.1's dates
    assert ours["seed"] == 10 and ours["train"]["learning_rate"] == 0.001 and ours["train"]["time"] == "1:30"
    assert ours["class_names"] == ["no", "yes", "off", "on", "y", "n", "NO"]


@pytest.mark.parametrize("text, key, lines", [
    ("seed: 1\nnum_classes: 1\nseed: 2\n", "seed", (1, 3)),
    ("train:\n  epochs: 1\n  epochs: 2\n", "epochs", (2, 3)),
    ("evaluate:\n  tta: none\nseed: 1\nevaluate:\n  tta: flips\n", "evaluate", (1, 4)),
])
def test_a_key_given_twice_is_an_error_naming_both_lines(tmp_path, text, key, lines):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=f"key '{key}' is given twice in one mapping, at line {lines[0]} and line "
                                         f"{lines[1]}.*delete one"):
        read_params(path)


def test_merge_keys_may_override_what_they_bring(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("seed: &s 3\nnum_classes: *s\nevaluate: &e {tta: none, worst_k: 2}\n"
                    "build_csv:\n  <<: *e\n  tta: flips\n")
    params = read_params(path)
    assert params["num_classes"] == 3 and params["build_csv"] == {"tta": "flips", "worst_k": 2}


def test_yes_for_a_boolean_says_to_write_true_or_false(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("mlflow: yes\n")
    with pytest.raises(ValueError, match="param 'mlflow' must be bool, got 'yes'.*Write true or false"):
        Params(path).shared("mlflow")
