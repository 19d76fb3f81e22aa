"""``backdoorlab poison``: build a poisoned HDF5 variant (with manifest, dataset card and preview).

Argument parsing only; the work is :func:`datasets_gen.build.build_variant`. Either a paper preset
(``--preset gtsrb-ours-yellow-square-7``) or an explicit recipe (``--trigger``, ``--source-class``,
``--target-class``, ``--share``, ``--share-of``) on a source (``--source synth-signs``,
``--source gtsrb:/data/GTSRB``, or a folder of the preset's data set).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from backdoorlab.cli import seed_arg
from datasets_gen.build import build_variant
from datasets_gen.poison import SHARE_OF
from datasets_gen.presets import PRESETS, get_preset


def _image_size(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)[xX,](\d+)", text.strip())
    if not m or min(int(m.group(1)), int(m.group(2))) < 1:
        raise argparse.ArgumentTypeError(f"image size must be HxW with H, W >= 1, e.g. 32x32, got {text!r}")
    return int(m.group(1)), int(m.group(2))


def _classes(text: str) -> list[int] | str:
    if text.strip().lower() == "all":
        return "all"
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"source classes must be ids like 8 or 3,5 or 'all', got {text!r}") from None


def add_parser(parser: argparse.ArgumentParser) -> None:
    parser.epilog = ("examples:\n"
                     "  backdoorlab poison --preset gtsrb-ours-yellow-square-7 --out v.h5\n"
                     "  backdoorlab poison --source synth-signs --trigger square:4:yellow --source-class 8 "
                     "--target-class 14 --share 0.07 --out variant.h5\n"
                     "  backdoorlab poison --preset lfw-ours-black-glasses-all-to-one --source ../shared/data/lfw-gray-20 --out lfw.h5\n"
                     "triggers: square:SIZE[:COLOUR], pattern[:COLOUR[:SCALE]], mask:PNG[:COLOUR], glasses[:COLOUR], "
                     "blend:IMG[:ALPHA]; placement @center|@bottom-right|@random|@eyes|@xy:X:Y")
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    what = parser.add_argument_group("what to build")
    what.add_argument("--preset", help="a paper setting (see --list-presets)")
    what.add_argument("--list-presets", action="store_true", help="print the presets and exit")
    what.add_argument("--source", default="synth",
                      help="synth (the preset's synthetic default), synth-signs, synth-faces, gtsrb:PATH, ytaf:PATH, "
                           "lfw:PATH, or a folder of the preset's data set (default: synth)")
    what.add_argument("--trigger", help="trigger spec, e.g. square:4:yellow (overrides the preset's)")
    what.add_argument("--source-class", type=_classes, help="source class id(s): 8, 3,5 or all")
    what.add_argument("--target-class", type=int, help="target class id")
    what.add_argument("--share", type=float, help="poison share in (0, 1]")
    what.add_argument("--share-of", choices=SHARE_OF,
                      help="what the share is of (default: source_class, or the preset's; target_class: k / (k + target rows))")
    what.add_argument("--name", help="name recorded in the variant (default: the preset's or 'custom')")
    how = parser.add_argument_group("how")
    how.add_argument("--out", help="output .h5 (manifest, card and preview are written beside it)")
    how.add_argument("--seed", type=seed_arg, default=0, help="seed of splits, poisoned rows and synthetic images (default 0)")
    how.add_argument("--strict", action="store_true", help="fail on an unreadable image instead of skipping it")
    how.add_argument("--limit-per-class", type=int, help="keep at most N rows per class in every split")
    how.add_argument("--image-size", type=_image_size, help="model input HxW (default: the data set's)")
    how.add_argument("--poison-provenance", choices=("own", "keep"), default="own",
                     help="poisoned rows in their own provenance groups (default) or in their source's")
    how.add_argument("--source-option", action="append", default=[], metavar="KEY=VALUE",
                     help="extra source argument, e.g. n_train=5000 (JSON values), repeatable")
    how.add_argument("--no-eye-detection", action="store_true",
                     help="glasses on sources that do not know the eyes: use the canonical eye position, "
                          "no landmark or Haar detection")
    how.add_argument("--image-compression", choices=("gzip", "none"), default="gzip",
                     help="how the images are stored: gzip (default) or none (noisy faces: ~15 %% more disk, "
                          "~155 us less CPU per 55x47 image)")
    how.add_argument("--no-preview", action="store_true", help="skip the card and preview (manifest is always written)")
    how.add_argument("--no-progress", action="store_true", help="no progress bar")


def _recipe_from_args(args: argparse.Namespace) -> str | dict:
    explicit = {k: v for k, v in (("trigger", args.trigger), ("source_classes", args.source_class),
                                  ("target_class", args.target_class), ("share", args.share),
                                  ("share_of", args.share_of), ("name", args.name)) if v is not None}
    if args.preset:
        if not explicit:
            return args.preset
        recipe = get_preset(args.preset)
        recipe.update(explicit)
        return recipe
    missing = [flag for flag, key in (("--trigger", "trigger"), ("--source-class", "source_classes"),
                                      ("--target-class", "target_class"), ("--share", "share")) if key not in explicit]
    if missing:
        raise ValueError(f"give --preset or all of --trigger, --source-class, --target-class, --share (missing {missing})")
    explicit.setdefault("share_of", "source_class")
    explicit.setdefault("name", "custom")
    return explicit


def _source_options(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--source-option must be KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def run(args: argparse.Namespace) -> int:
    if args.list_presets:
        for name, p in PRESETS.items():
            print(f"{name:30s} {p['dataset']:6s} {p['trigger']:26s} share {p['share']:g} of {p['share_of']}")
        return 0
    if not args.out:
        raise ValueError("--out is required (the output .h5)")
    if args.preset and args.preset not in PRESETS:
        raise ValueError(f"unknown preset {args.preset!r}; known presets: {', '.join(PRESETS)}")
    recipe = _recipe_from_args(args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)  # as train, evaluate and defend do
    out = build_variant(recipe, args.out, source=args.source, seed=args.seed, limit_per_class=args.limit_per_class,
                        progress=not args.no_progress, strict=args.strict, image_size=args.image_size,
                        poison_provenance=args.poison_provenance, source_kwargs=_source_options(args.source_option),
                        publish=not args.no_preview, detect_eyes=not args.no_eye_detection,
                        image_compression=args.image_compression)
    print(f"wrote {out}", file=sys.stderr)
    return 0
