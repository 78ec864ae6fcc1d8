"""Build an albumentations pipeline from the list of transforms in params.yaml (its own serialisation).

Importing albumentations checks PyPI for a newer version unless NO_ALBUMENTATIONS_UPDATE is set, which the
entry points do (segpipe/core/cli.py) before they import this module."""
from __future__ import annotations

import inspect
import warnings

import albumentations as A
from albumentations.core.serialization import SERIALIZABLE_REGISTRY

from segpipe.core.params import did_you_mean
from segpipe.data.image_io import IGNORE_ID


def valid_transform_names() -> list[str]:
    """Names usable as `__class_fullname__` for image+mask transforms."""
    return sorted(name for name, cls in SERIALIZABLE_REGISTRY.items()
                  if isinstance(cls, type) and issubclass(cls, (A.DualTransform, A.ImageOnlyTransform))
                  and not name.startswith(("Basic", "Dual", "ImageOnly", "NoOp")))


def build_compose(transforms: list[dict], *, param_name: str = "augment.transforms") -> A.Compose:
    """A seeded-ready `A.Compose` from serialised transforms ({"__class_fullname__": "HorizontalFlip", "p": 0.5}).

    Geometric transforms that pad (Affine, Rotate, PadIfNeeded, ... with a constant border) fill the mask
    with IGNORE_ID unless the spec gives `fill_mask`: a padded pixel has no label, and filling it with
    class 0 would teach the model that borders are background.

    Raises:
        ValueError naming the transform and the valid choices for an unknown name, and naming the
        argument for an invalid one (albumentations only warns there; a typo must not be ignored).
    """
    if not isinstance(transforms, list):
        raise ValueError(f"param '{param_name}' must be a list of transforms, got {transforms!r}.")
    built = []
    for index, spec in enumerate(transforms):
        where = f"param '{param_name}[{index}]'"
        if not isinstance(spec, dict) or "__class_fullname__" not in spec:
            raise ValueError(f"{where} must be a mapping with '__class_fullname__' (e.g. "
                             f"{{__class_fullname__: HorizontalFlip, p: 0.5}}), got {spec!r}.")
        name = spec["__class_fullname__"]
        if name not in SERIALIZABLE_REGISTRY:
            raise ValueError(f"{where}: unknown transform '{name}'{did_you_mean(name, valid_transform_names())}; "
                             f"valid choices: {', '.join(valid_transform_names())}.")
        cls = SERIALIZABLE_REGISTRY[name]
        if "fill_mask" in inspect.signature(cls.__init__).parameters and "fill_mask" not in spec:
            spec = {**spec, "fill_mask": IGNORE_ID}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                # a missing probability defaulting to 0.5 is documented albumentations behaviour, not a typo
                warnings.filterwarnings("ignore", message=".*has no 'p' parameter")
                built.append(A.from_dict({"transform": spec}))
        except (Warning, TypeError, ValueError) as err:
            raise ValueError(f"{where}: invalid arguments for transform '{name}': {err}".strip()) from None
    return A.Compose(built)
