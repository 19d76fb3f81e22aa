"""Check where the sunglasses trigger would land on a face source, before publishing a variant.

:func:`check_eye_location` runs the builder's eye location (:func:`datasets_gen.eyes.locate_eyes`,
in a thread pool as the builder does) over the images of a source, counts the method that found
each pair of eyes and times it, and writes a contact sheet (PNG) of images with the glasses placed.
The sheet puts the images the detectors missed first (Haar or canonical position: the ones most
likely to carry glasses off the eyes), then a spread over the rest, so a person can see at a
glance whether the variant's trigger is the one its card names. ``backdoorlab faces check`` is the
command line of this function.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
from tqdm.auto import tqdm

from datasets_gen.atomic import atomic_write_bytes, atomic_write_json, json_safe
from datasets_gen.build import resolve_source
from datasets_gen.eyes import EYE_METHODS, eye_location_info, locate_eyes
from datasets_gen.publish import _tile
from datasets_gen.triggers import parse_trigger

#: Tile border colour (RGB) per method on the contact sheet.
_METHOD_COLOUR = {"known": (40, 120, 255), "landmarks": (0, 170, 0), "haar": (255, 150, 0), "canonical": (220, 0, 0)}


def _positive_int(value: Any, name: str, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _write_png(path: Path, rgb: np.ndarray) -> None:
    """Write ``rgb`` to ``path`` atomically (temporary file beside it, then rename)."""
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"could not encode the contact sheet for {path}")
    atomic_write_bytes(path, buf.tobytes())


def _sheet(tiles: list[tuple[np.ndarray, str, str]], title: str, tile: int, n_cols: int) -> np.ndarray:
    """Contact sheet: a title line, then tiles with a method-coloured border and a caption."""
    cap, border = 30, 3
    cell_w, cell_h = tile + 2 * border + 4, tile + 2 * border + cap
    n_rows = max(1, -(-len(tiles) // n_cols))
    sheet = np.full((34 + n_rows * cell_h, max(n_cols * cell_w, 600), 3), 255, np.uint8)
    cv2.putText(sheet, title[:120], (6, 23), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    for k, (img, method, name) in enumerate(tiles):
        x, y = (k % n_cols) * cell_w + 2, 34 + (k // n_cols) * cell_h
        sheet[y:y + tile + 2 * border, x:x + tile + 2 * border] = _METHOD_COLOUR.get(method, (0, 0, 0))
        sheet[y + border:y + border + tile, x + border:x + border + tile] = _tile(img, tile)
        for j, line in enumerate((method, name)):
            cv2.putText(sheet, line[:max(4, tile // 6)], (x, y + tile + 2 * border + 11 + 12 * j),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.34, (40, 40, 40), 1, cv2.LINE_AA)
    return sheet


def check_eye_location(source: Any, sheet: str | os.PathLike | None = None, *, every: int = 1,
                       limit: int | None = None, workers: int | None = None, n_tiles: int = 48, tile: int = 112,
                       trigger: str = "glasses:green@eyes", detectors: Sequence[str] | None = None,
                       json_out: str | os.PathLike | None = None, progress: bool = True) -> dict[str, Any]:
    """Locate the eyes on a face source's images as the builder would, count methods, draw a sheet.

    Parameters
    ----------
    source : str, path-like or Source
        A source spec as :func:`datasets_gen.build.resolve_source` takes it (``lfw:DIR``,
        ``ytaf:DIR``, ``synth-faces``) or an opened source. Every image of its train, test and
        clean splits is checked, in the order of the source's row index.
    sheet : path-like, optional
        Write the contact sheet here (``.png``, atomically). None: no sheet.
    every : int
        Check every ``every``-th image only (1: all).
    limit : int, optional
        Check at most this many images (after ``every``).
    workers : int, optional
        Threads locating eyes (default: the source's decoding threads, as the builder).
    n_tiles : int
        Images on the sheet: up to half of them those the landmark model missed, the rest spread.
    tile : int
        Tile size on the sheet, in pixels (>= 32).
    trigger : str
        The glasses spec drawn on the sheet (an ``@eyes`` trigger).
    detectors : sequence of {"landmarks", "haar"}, optional
        Which detectors to try, in order (default: both, as the builder).
    json_out : path-like, optional
        Also write the report here as JSON (atomically).
    progress : bool
        Show a tqdm progress bar.

    Returns
    -------
    dict
        ``source``, ``n_images`` (in the source), ``n_checked``, ``unreadable``, ``counts`` and
        ``shares`` per method (of the readable images checked), ``seconds``, ``images_per_s``,
        ``cpu_ms_per_image`` (process CPU time, all threads, per image checked),
        ``workers``, ``locator`` (:func:`datasets_gen.eyes.eye_location_info`), ``missed``
        (up to 20 images that fell back to Haar or the canonical position) and ``sheet``.

    Raises
    ------
    ValueError
        Bad ``every``/``limit``/``workers``/``n_tiles``/``tile``, a trigger that is not placed on
        the eyes, an unknown detector, a source with no images.
    """
    every = _positive_int(every, "every")
    limit = _positive_int(limit, "limit", allow_none=True)
    n_tiles = _positive_int(n_tiles, "n_tiles")
    tile = _positive_int(tile, "tile")
    if tile < 32:
        raise ValueError(f"tile must be >= 32 px, got {tile}")
    trig = parse_trigger(trigger)
    if trig.placement.kind != "eyes":
        raise ValueError(f"the check draws a trigger placed on the eyes (e.g. glasses:green@eyes), got {trigger!r}")
    sheet_path = None if sheet is None else Path(sheet)
    if sheet_path is not None:
        if sheet_path.suffix.lower() != ".png":
            raise ValueError(f"the contact sheet must be a .png file, got {sheet_path}")
        if not sheet_path.parent.is_dir():
            raise FileNotFoundError(f"folder {sheet_path.parent} for the contact sheet does not exist")
    if json_out is not None and not Path(json_out).parent.is_dir():
        raise FileNotFoundError(f"folder {Path(json_out).parent} for the JSON report does not exist")
    src, spec = resolve_source(source, None, seed=0, strict=False, image_size=None, source_kwargs=None)
    n_workers = _positive_int(src.n_threads if workers is None else workers, "workers")
    canonical = src.canonical_eyes or "default"
    locate_eyes(np.zeros((8, 8), np.uint8), detect=False, canonical=canonical, detectors=detectors)  # check args

    items = sorted(((int(t.index[r]), split, r) for split, t in src.tables.items() for r in range(len(t))))
    n_images = len(items)
    if n_images == 0:
        raise ValueError(f"source {spec!r} holds no images")
    items = items[::every][:limit]

    def one(item: tuple[int, str, int]) -> tuple[np.ndarray | None, str | None]:
        _, split, row = item
        img = src.load_original(split, row)
        if img is None:
            return None, None
        known = src.eye_landmarks(split, np.array([row]))
        if known is not None:
            # known eyes are in model-size pixels; the original may be another size
            h, w = src.image_size
            known = known[0] * np.array([img.shape[1] / w, img.shape[0] / h])
        eyes, method = locate_eyes(img, known, canonical=canonical, detectors=detectors)
        return np.asarray(eyes, np.float64), method

    t0, c0 = time.perf_counter(), time.process_time()
    with ThreadPoolExecutor(n_workers) as ex, tqdm(total=len(items), unit="img", desc=f"eyes {src.name}",
                                                    disable=not progress, dynamic_ncols=True) as bar:
        results = []
        for r in ex.map(one, items):
            results.append(r)
            bar.update(1)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0

    methods = [m for _, m in results]
    counts = {m: methods.count(m) for m in EYE_METHODS if methods.count(m)}
    n_read = sum(counts.values())
    missed = [k for k, (_, m) in enumerate(results) if m in ("haar", "canonical")]
    report: dict[str, Any] = {
        "source": spec, "n_images": n_images, "n_checked": len(items), "unreadable": methods.count(None),
        "counts": counts, "shares": {m: n / n_read for m, n in counts.items()},
        "seconds": seconds, "images_per_s": len(items) / seconds if seconds > 0 else float("inf"),
        # CPU time of all threads: the cost per image whatever else the machine is doing
        "cpu_ms_per_image": 1000 * cpu / max(1, len(items)),
        "workers": n_workers, "locator": eye_location_info(True),
        "missed": [str(src.tables[items[k][1]].keys[items[k][2]]) for k in missed[:20]], "sheet": None,
    }
    if sheet_path is not None:
        readable = [k for k, (_, m) in enumerate(results) if m is not None]
        first = missed[:n_tiles // 2]
        rest = [k for k in readable if k not in set(first)]
        spread = [rest[int(j)] for j in np.unique(np.linspace(0, len(rest) - 1, min(len(rest), n_tiles - len(first)))
                                                   .round().astype(int))] if rest else []
        tiles = []
        for k in sorted(first + spread):
            _, split, row = items[k]
            img = src.load_original(split, row)
            if img is None:  # vanished since the pass
                continue
            eyes = results[k][0]
            trig.apply_inplace(img, eyes=((eyes[0, 0], eyes[0, 1]), (eyes[1, 0], eyes[1, 1])))
            tiles.append((img, results[k][1], Path(str(src.tables[split].keys[row])).stem))
        shares = ", ".join(f"{m} {100 * s:.1f} %" for m, s in report["shares"].items())
        title = f"{spec}: {len(items)} images checked; {shares}"
        _write_png(sheet_path, _sheet(tiles, title, tile, n_cols=8))
        report["sheet"] = str(sheet_path)
    if json_out is not None:
        atomic_write_json(json_out, json_safe(report))
    return report
