"""``backdoorlab faces check``: where would the sunglasses trigger land on a face source?

Argument parsing only; the work is :func:`datasets_gen.eyecheck.check_eye_location`. It prints the
share of images whose eyes each method found (landmarks, Haar cascades, canonical position), the
throughput, and writes a contact sheet (PNG) of placed glasses to look at before publishing a
variant. ``--min-landmarks SHARE`` turns the check into a gate: exit status 1 below that share.
"""

from __future__ import annotations

import argparse
import sys

from datasets_gen.eyecheck import check_eye_location
from datasets_gen.eyes import FACES_EXTRA_HINT, landmarks_available


def _share(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1], got {text!r}") from None
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {v}")
    return v


def add_parser(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = ("examples:\n"
                     "  backdoorlab faces check --source lfw:../shared/data/lfw-gray-20 --sheet lfw-eyes.png\n"
                     "  backdoorlab faces check --source ytaf:/data/YouTubeFaces --every 50 --min-landmarks 0.95\n"
                     "landmarks need the optional extra: pip install \"backdoorlab[faces]\"")
    sub = parser.add_subparsers(dest="faces_command", metavar="ACTION")
    sub.required = True
    chk = sub.add_parser("check", help="share of images per eye-location method, and a contact sheet of placed glasses",
                         description="Locate the eyes on every image of a face source as 'backdoorlab poison' would "
                                     "for an @eyes trigger; print the share per method and write a contact sheet.")
    chk.add_argument("--source", required=True, help="lfw:DIR, ytaf:DIR or synth-faces")
    chk.add_argument("--sheet", default="eyes-check.png", help="contact sheet PNG to write (default eyes-check.png)")
    chk.add_argument("--every", type=int, default=1, help="check every N-th image only (default 1: all)")
    chk.add_argument("--limit", type=int, default=None, help="check at most N images")
    chk.add_argument("--workers", type=int, default=None, help="threads locating eyes (default: as the builder)")
    chk.add_argument("--tiles", type=int, default=48, help="images on the contact sheet (default 48)")
    chk.add_argument("--trigger", default="glasses:green@eyes", help="glasses drawn on the sheet (default glasses:green@eyes)")
    chk.add_argument("--detectors", default="landmarks,haar",
                     help="detectors to try, in order (default landmarks,haar; e.g. haar to see the cascades alone)")
    chk.add_argument("--min-landmarks", type=_share, default=None,
                     help="exit with status 1 when fewer than this share of the images were located by landmarks")
    chk.add_argument("--json", default=None, help="also write the report as JSON here")
    chk.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    detectors = [d.strip() for d in args.detectors.split(",") if d.strip()]
    rep = check_eye_location(args.source, args.sheet, every=args.every, limit=args.limit, workers=args.workers,
                             n_tiles=args.tiles, trigger=args.trigger, detectors=detectors,
                             json_out=args.json, progress=not args.no_progress)
    n_read = sum(rep["counts"].values())
    print(f"{rep['source']}: {rep['n_checked']} of {rep['n_images']} images checked, {n_read} readable "
          f"({rep['unreadable']} unreadable)")
    for method, n in rep["counts"].items():
        print(f"  {method:<10} {n:>7}  {100 * rep['shares'][method]:6.2f} %")
    print(f"{rep['images_per_s']:.1f} images/s ({rep['seconds']:.1f} s, {rep['workers']} worker threads; "
          f"{rep['cpu_ms_per_image']:.1f} ms CPU per image)")
    if "landmarks" in detectors and not landmarks_available():
        print(f"note: no landmark model here; {FACES_EXTRA_HINT}")
    if rep["sheet"]:
        print(f"contact sheet: {rep['sheet']}")
    if args.json:
        print(f"report written to {args.json}")
    if args.min_landmarks is not None:
        share = rep["shares"].get("landmarks", 0.0)
        if share < args.min_landmarks:
            print(f"landmarks located {100 * share:.2f} % of the images, below --min-landmarks "
                  f"{100 * args.min_landmarks:.2f} %", file=sys.stderr)
            return 1
    return 0
