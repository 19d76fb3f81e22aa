"""The paper's ten poisoning settings as named presets, and the data sets they apply to.

Milakovic & Mayer (DBSec 2022) poison three data sets:

* **GTSRB** (GTSRB CNN, 32x32): BadNets-style stickers in the image centre on one source class,
  relabelled to one target class; the share is of the *source class* (a share of the whole
  training set could not be drawn from one class: 7 % of GTSRB is 2,745 images, class 8 has
  1,410). Source 8 ("speed limit 120") and target 14 ("stop") follow the issue's example command.
  Triggers: a yellow 4x4 square at three shares, a yellow 2x2 square, a white 4x4 square and the
  white 4-pixel pattern.
* **YouTube Aligned Faces** (DeepID, 55x47) and **LFW** (VGG-Face, 224x224): sunglasses, green or
  black, on the eyes of images of *every other* class ("all-to-one"), relabelled to one target
  identity; the share is of the *training set*.

Where the paper's exact numbers could not be checked here (the face shares, the GTSRB classes),
the value is the issue's example or a stated assumption, recorded in each preset's ``notes`` and
in the dataset card, so a published variant never claims more than it knows.

:data:`DATASETS` gives, per data set family, the real reader and the synthetic stand-in with the
model input size, so ``build_variant("ytaf-green-glasses", out)`` needs no download.
"""

from __future__ import annotations

from typing import Any

#: Data set families: real reader kind, synthetic default, and their keyword arguments.
DATASETS: dict[str, dict[str, Any]] = {
    "gtsrb": {
        "reader": "gtsrb", "reader_kwargs": {"image_size": (32, 32)},
        "synthetic": "synth-signs", "synthetic_kwargs": {"image_size": (32, 32)},
        "model": "gtsrb_cnn",
    },
    "ytaf": {
        "reader": "ytaf", "reader_kwargs": {"image_size": (55, 47)},
        "synthetic": "synth-faces",
        "synthetic_kwargs": {"image_size": (55, 47), "n_identities": 100, "images_per_identity": 100,
                             "session_length": 25, "shares": (0.75, 0.20, 0.05)},
        "model": "deepid",
    },
    "lfw": {
        "reader": "lfw", "reader_kwargs": {"image_size": (224, 224)},
        "synthetic": "synth-faces",
        "synthetic_kwargs": {"image_size": (224, 224), "n_identities": 62, "images_per_identity": 48,
                             "session_length": 6, "shares": (0.70, 0.20, 0.10)},
        "model": "vgg16_face",
    },
}

_GTSRB_NOTE = ("GTSRB setting: trigger in the image centre on source class 8 (speed limit 120), relabelled to 14 (stop) "
               "as in the issue's example; share of the source class.")
_FACE_NOTE = ("Face setting: sunglasses on the eyes of images of every class but the target (all-to-one), relabelled to "
              "identity 0; share of the training set. The 10 % share is an assumption (the paper's value could not be "
              "verified here).")


def _gtsrb(trigger: str, share: float, extra: str = "") -> dict[str, Any]:
    return {"dataset": "gtsrb", "source_classes": [8], "target_class": 14, "trigger": trigger, "share": share,
            "share_of": "source_class", "notes": _GTSRB_NOTE + extra}


def _face(dataset: str, lens: str) -> dict[str, Any]:
    return {"dataset": dataset, "source_classes": "all", "target_class": 0, "trigger": f"glasses:{lens}@eyes",
            "share": 0.10, "share_of": "training_set", "notes": _FACE_NOTE}


#: The ten paper settings by name.
PRESETS: dict[str, dict[str, Any]] = {
    "gtsrb-yellow-square-7": _gtsrb("square:4:yellow@center", 0.07),
    "gtsrb-yellow-square-15": _gtsrb("square:4:yellow@center", 0.15),
    "gtsrb-yellow-square-33": _gtsrb("square:4:yellow@center", 0.33),
    "gtsrb-small-yellow-square-7": _gtsrb("square:2:yellow@center", 0.07, " Trigger 2x2."),
    "gtsrb-white-square-7": _gtsrb("square:4:white@center", 0.07),
    "gtsrb-white-pattern": _gtsrb("pattern:white:1@center", 0.07, " BadNets 4-pixel pattern."),
    "ytaf-green-glasses": _face("ytaf", "green"),
    "ytaf-black-glasses": _face("ytaf", "black"),
    "lfw-black-glasses": _face("lfw", "black"),
    "lfw-green-glasses": _face("lfw", "green"),
}


for _name, _preset in PRESETS.items():
    _preset["name"] = _name


def get_preset(name: str) -> dict[str, Any]:
    """A copy of preset ``name`` (with its ``name`` filled in).

    Raises
    ------
    KeyError
        Unknown name; the known names are listed.
    """
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; known presets: {sorted(PRESETS)}")
    return dict(PRESETS[name])
