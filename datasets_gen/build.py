"""Build a poisoned variant: source → poison → HDF5 (+ manifest, dataset card, preview).

:func:`build_variant` is the library function behind ``backdoorlab poison``. It opens a source
(the preset's synthetic default, a real data set folder, or any source spec), chooses the rows to
poison from metadata only (exact counts, seeded), then streams every split in chunks: decode or
render a chunk, composite the trigger on its poisoned rows, append it to the variant; source-class
test rows are also written, triggered, to ``test_triggered``. Nothing but one chunk of pixels is
in memory, so YouTube-Faces-scale sources work. The output path is checked before any work (an
existing directory of that name is refused at once, not after the build). The file appears only
when complete: it and its manifest, card and preview are written to temporaries and published as
one set by :func:`datasets_gen.variant_io.commit_variant`, the ``.h5`` last.

Poisoned training rows get their own provenance ids by default (``poison_provenance="own"``: the
attacker's contribution arrives as its own groups of the source's typical group size, which is
what Data Provenance looks for); ``"keep"`` leaves them in the groups of the images they came from.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from tqdm.auto import tqdm

from datasets_gen import __version__
from datasets_gen.eyes import EYE_METHODS, eye_location_info, locate_eyes
from datasets_gen.poison import Recipe, achieved_share, select_poisoned
from datasets_gen.presets import DATASETS, get_preset
from datasets_gen.publish import write_card, write_preview
from datasets_gen.readers.base import Source
from datasets_gen.sources import REAL_KINDS, SYNTHETIC_KINDS, open_source
from datasets_gen.triggers import Trigger
from datasets_gen.variant_io import (IMAGE_COMPRESSIONS, VariantWriter, check_destination, sidecar_tmp_paths,
                                    write_manifest)

POISON_PROVENANCE = ("own", "keep")

_LICENCE = {
    "gtsrb": "Images from the German Traffic Sign Recognition Benchmark (Stallkamp et al., 2012); follow its terms.",
    "ytaf": "Images from YouTube Faces (Wolf et al., 2011); research use under its terms.",
    "lfw": "Images from Labeled Faces in the Wild (Huang et al., 2007); follow its terms.",
}


def resolve_recipe(preset_or_recipe: str | Mapping[str, Any] | Recipe) -> tuple[Recipe, str | None]:
    """(Recipe, data set family or None) from a preset name, a recipe dict or a Recipe."""
    if isinstance(preset_or_recipe, Recipe):
        return preset_or_recipe, preset_or_recipe.extra.get("dataset")
    if isinstance(preset_or_recipe, str):
        d = get_preset(preset_or_recipe)
    elif isinstance(preset_or_recipe, Mapping):
        d = dict(preset_or_recipe)
    else:
        raise TypeError(f"expected a preset name, a recipe dict or a Recipe, got {type(preset_or_recipe).__name__}")
    dataset = d.pop("dataset", None)
    if dataset is not None and dataset not in DATASETS:
        raise ValueError(f"unknown dataset family {dataset!r}; known: {sorted(DATASETS)}")
    recipe = Recipe.from_dict(d)
    if dataset:
        recipe.extra = {**recipe.extra, "dataset": dataset}
    return recipe, dataset


def resolve_source(source: str | os.PathLike | Source, dataset: str | None, *, seed: int, strict: bool,
                   image_size: tuple[int, int] | None, source_kwargs: Mapping[str, Any] | None) -> tuple[Source, str]:
    """Open the source; returns (source, spec string recorded in the variant).

    ``source`` may be ``"synth"`` (the data set family's synthetic default), a synthetic name, a
    ``kind:path`` spec, a folder (read with the family's real reader) or a :class:`Source`.
    """
    if isinstance(source, Source):
        return source, source.name
    kw: dict[str, Any] = {}
    text = os.fspath(source)
    fam = DATASETS.get(dataset or "", {})
    if text == "synth":
        if not fam:
            raise ValueError("source='synth' needs a preset or a recipe with a 'dataset' (gtsrb, ytaf, lfw); "
                             "or name the source, e.g. 'synth-signs' or 'gtsrb:/data/GTSRB'")
        spec = fam["synthetic"]
        kw.update(fam["synthetic_kwargs"])
    elif text in SYNTHETIC_KINDS:
        spec = text
        if fam and fam["synthetic"] == text:
            kw.update(fam["synthetic_kwargs"])
    elif text.split(":", 1)[0].lower() in REAL_KINDS and ":" in text:
        spec = text
        kind = text.split(":", 1)[0].lower()
        if kind in DATASETS:
            kw.update(DATASETS[kind]["reader_kwargs"])
    else:
        p = Path(text)
        if not p.exists():
            raise FileNotFoundError(f"source {text!r} is neither a known source name nor an existing folder")
        if not fam:
            raise ValueError(f"source folder {p} needs a data set family: use 'gtsrb:{p}', 'ytaf:{p}' or 'lfw:{p}'")
        spec = f"{fam['reader']}:{p}"
        kw.update(fam["reader_kwargs"])
    if image_size is not None:
        kw["image_size"] = tuple(image_size)
    kw.update(dict(source_kwargs or {}))
    kw["seed"] = seed
    kw["strict"] = strict
    return open_source(spec, **kw), spec


def _chunk_rows(h: int, w: int) -> int:
    return int(max(64, min(4096, (1 << 22) // (h * w * 3))))


class _Poisoner:
    """Applies the trigger to rows of a chunk: placement rng per row, eyes per the source.

    Eyes the source does not know are located (:func:`datasets_gen.eyes.locate_eyes`) on the
    original-resolution image, by a pool of ``workers`` threads: reading the file, dlib's face
    detector and OpenCV's cascades all release the GIL, and at ~10-30 ms per image the detection
    would otherwise dominate a face build. Results are placed by row, so the file does not depend
    on the number of workers. The pool lives as long as the poisoner (:meth:`close` ends it): each
    thread loads its own detectors once (dlib's face detector takes ~0.3 s to build), so threads
    made afresh per chunk would spend more time loading than detecting.
    """

    def __init__(self, trigger: Trigger, source: Source, seed: int, detect_eyes: bool = True,
                 workers: int | None = None):
        self.trigger, self.source, self.seed, self.detect = trigger, source, seed, detect_eyes
        n = source.n_threads if workers is None else workers
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"eye-location workers must be an integer >= 1, got {n!r}")
        self.workers = int(n)
        self.eye_methods: Counter[str] = Counter()
        self._pool: ThreadPoolExecutor | None = None

    def close(self) -> None:
        """End the eye-location threads (a later call to :meth:`apply` starts new ones)."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def _locate(self, split: str, row: int, image: np.ndarray) -> tuple[list[list[float]], str]:
        """Eye centres of one row in model-size pixels, and the method that found them."""
        original = self.source.load_original(split, row) if self.detect else None
        base = original if original is not None else image
        (l, r), method = locate_eyes(base, detect=self.detect, canonical=self.source.canonical_eyes or "default")
        h, w = image.shape[:2]
        sy, sx = h / base.shape[0], w / base.shape[1]
        return [[l[0] * sx, l[1] * sy], [r[0] * sx, r[1] * sy]], method

    def _eyes(self, split: str, rows: np.ndarray, images: np.ndarray) -> np.ndarray | None:
        if self.trigger.placement.kind != "eyes":
            return None
        known = self.source.eye_landmarks(split, rows)
        out = np.full((rows.size, 2, 2), np.nan)
        if known is not None:
            out[:] = known
        todo = np.flatnonzero(~np.isfinite(out).all(axis=(1, 2)))
        if todo.size and self.workers > 1:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="eyes")
            found = list(self._pool.map(lambda i: self._locate(split, int(rows[i]), images[i]), todo))
        else:
            found = [self._locate(split, int(rows[i]), images[i]) for i in todo]
        for i, (eyes, method) in zip(todo, found):
            out[i] = eyes
            self.eye_methods[method] += 1
        if known is not None:
            self.eye_methods["known"] += int(np.isfinite(known).all(axis=(1, 2)).sum())
        return out

    def apply(self, split: str, rows: np.ndarray, images: np.ndarray, index: np.ndarray) -> np.ndarray:
        """Triggered copies of ``images`` (n, H, W, 3); ``index`` seeds random placements per row."""
        out = images.copy()
        eyes = self._eyes(split, rows, images)
        for i in range(out.shape[0]):
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, 0x7219, 1 if split == "train" else 2,
                                                                int(index[i])]))
            e = None if eyes is None else ((eyes[i, 0, 0], eyes[i, 0, 1]), (eyes[i, 1, 0], eyes[i, 1, 1]))
            self.trigger.apply_inplace(out[i], rng=rng, eyes=e)
        return out


def build_variant(preset_or_recipe: str | Mapping[str, Any] | Recipe, out: str | os.PathLike, *,
                  source: str | os.PathLike | Source = "synth", seed: int = 0, limit_per_class: int | None = None,
                  progress: bool = True, strict: bool = False, image_size: tuple[int, int] | None = None,
                  poison_provenance: str = "own", source_kwargs: Mapping[str, Any] | None = None,
                  chunk_size: int | None = None, publish: bool = True, detect_eyes: bool = True,
                  image_compression: str = "gzip") -> Path:
    """Build a poisoned variant and its manifest, dataset card and preview.

    Parameters
    ----------
    preset_or_recipe : str, dict or Recipe
        A name from :data:`datasets_gen.presets.PRESETS`, or a recipe dict (``source_classes``,
        ``target_class``, ``trigger``, ``share``, ``share_of``, optional ``dataset`` and ``name``).
    out : path-like
        Output ``.h5``; the manifest, card and preview go beside it (``<stem>.manifest.json``, ...).
    source : str, path-like or Source
        ``"synth"`` (the preset's synthetic default), ``"synth-signs"``, ``"synth-faces"``,
        ``"gtsrb:PATH"``, ``"ytaf:PATH"``, ``"lfw:PATH"``, a folder of the preset's data set, or an
        opened :class:`~datasets_gen.readers.base.Source`.
    seed : int
        Seeds the splits, the poisoned rows, random placements and the synthetic images.
    limit_per_class : int, optional
        Keep at most this many rows per class in every split (quick runs).
    progress : bool
        Show a tqdm progress bar.
    strict : bool
        Fail on an unreadable image instead of skipping and counting it.
    image_size : (H, W), optional
        Override the model input size.
    poison_provenance : {"own", "keep"}
        Provenance of poisoned rows (see the module docstring).
    source_kwargs : dict, optional
        More arguments for the source (e.g. ``n_train`` for synth-signs).
    chunk_size : int, optional
        Rows per chunk (default: ~4 MiB of pixels).
    publish : bool
        Write the card and preview (the manifest is always written).
    detect_eyes : bool
        For ``@eyes`` triggers on sources that do not know the eyes: detect them on the original
        image (dlib landmarks with the ``faces`` extra, else Haar cascades; see
        :mod:`datasets_gen.eyes`) or go straight to the canonical position. The methods used are
        counted in ``build.eye_location``, the chain available in ``build.eye_locator``.
    image_compression : {"gzip", "none"}
        How the images are stored (:data:`datasets_gen.variant_io.IMAGE_COMPRESSIONS`): gzip (the
        default) or uncompressed — for noisy images (synth-faces: gzip keeps 87 % of the bytes)
        ``"none"`` saves ~155 us of CPU per 55x47 image for ~15 % more disk.

    Returns
    -------
    Path
        ``out``.

    Raises
    ------
    KeyError
        Unknown preset.
    ValueError
        Unknown class, share outside (0, 1], trigger larger than the image, bad source, ...
    FileNotFoundError
        Missing data folder or annotation file.
    """
    out = check_destination(out)
    if image_compression not in IMAGE_COMPRESSIONS:
        raise ValueError(f"image_compression must be one of {IMAGE_COMPRESSIONS}, got {image_compression!r}")
    if poison_provenance not in POISON_PROVENANCE:
        raise ValueError(f"poison_provenance must be one of {POISON_PROVENANCE}, got {poison_provenance!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an integer, got {seed!r}")
    recipe, dataset = resolve_recipe(preset_or_recipe)
    src, source_spec = resolve_source(source, dataset, seed=int(seed), strict=strict, image_size=image_size,
                                      source_kwargs=source_kwargs)
    src.limit_per_class(limit_per_class, int(seed))
    recipe.check_classes(src.n_classes)
    train_t, test_t, clean_t = (src.tables[s] for s in ("train", "test", "clean"))
    recipe = recipe.draw_source(train_t.labels, int(seed), src.n_classes)
    sources = recipe.resolved_sources(src.n_classes)
    trigger = recipe.build_trigger()
    h, w = src.image_size
    trigger.fitted((h, w))  # "trigger larger than the image" before any work

    poisoned = select_poisoned(train_t.labels, recipe, int(seed), n_classes=src.n_classes)
    n_target_train = int(np.count_nonzero(train_t.labels == recipe.target_class))
    n_source_train = int(np.count_nonzero(np.isin(train_t.labels, sources)))
    train_prov = train_t.provenance.copy()
    group = int(src.provenance_group_size)
    if poison_provenance == "own":
        base = int(max(t.provenance.max() if len(t) else 0 for t in (train_t, test_t, clean_t))) + 1
        prow = np.flatnonzero(poisoned)
        train_prov[prow] = base + np.arange(prow.size) // max(1, group)
    is_source_test = np.isin(test_t.labels, sources)
    chunk = int(chunk_size) if chunk_size else _chunk_rows(h, w)
    if chunk < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")

    poisoner = _Poisoner(trigger, src, int(seed), detect_eyes)
    recipe_d = recipe.to_dict()
    recipe_d.update({"dataset": dataset, "n_poisoned_requested": int(poisoned.sum()),
                     "poison_provenance": poison_provenance, "n_source_train": n_source_train,
                     "n_target_train": n_target_train,
                     "share_achieved": achieved_share(int(poisoned.sum()), recipe.share_of, n_source_train,
                                                      len(train_t), n_target_train)})
    attrs: dict[str, Any] = {
        "recipe": recipe_d, "trigger": trigger.to_dict(), "class_names": src.class_names,
        "n_classes": src.n_classes, "seed": int(seed), "generator_version": __version__,
        "source": src.name, "target_class": recipe.target_class, "source_classes": sources,
        "image_shape": (h, w, 3), "source_spec": source_spec, "source_config": src.config,
    }
    written = Counter()
    build_info: dict[str, Any] = {}

    def finish(tmp: Path, final: Path) -> dict[str, Path]:
        temps = sidecar_tmp_paths(final)
        files = {"manifest": write_manifest(final, data_path=tmp, extra={"build": build_info}, dest=temps["manifest"])}
        if publish:
            sha = json.loads(files["manifest"].read_text(encoding="utf-8"))["sha256"]
            files["preview"] = write_preview(final, data_path=tmp, dest=temps["preview"])
            files["card"] = write_card(final, data_path=tmp, build=build_info, dest=temps["card"], sha256=sha)
        return files

    def chunks():
        """(split, table, rows, images, ok) for every chunk; the next chunk loads in a background
        thread while the current one is poisoned, compressed and written (decoding, rendering and
        compression release the GIL, so two cores overlap them)."""
        plan = [(split, table, np.arange(s0, min(s0 + chunk, len(table))))
                for split, table in (("train", train_t), ("test", test_t), ("clean", clean_t))
                for s0 in range(0, len(table), chunk)]
        with ThreadPoolExecutor(1) as ex:
            pending = ex.submit(src.load, plan[0][0], plan[0][2]) if plan else None
            for k, (split, table, rows) in enumerate(plan):
                images, ok = pending.result()
                if k + 1 < len(plan):
                    pending = ex.submit(src.load, plan[k + 1][0], plan[k + 1][2])
                yield split, table, rows, images, ok

    total = len(train_t) + len(test_t) + len(clean_t)
    bar = tqdm(total=total, unit="img", desc=f"poison {src.name} -> {out.name}", disable=not progress,
               dynamic_ncols=True)
    try:
        with VariantWriter(out, attrs, on_complete=finish, image_compression=image_compression) as writer:
            for split, table, rows, images, ok in chunks():
                labels = table.labels[rows]
                orig = labels.copy()
                prov = (train_prov if split == "train" else table.provenance)[rows]
                index = table.index[rows]
                is_p = poisoned[rows] & ok if split == "train" else np.zeros(rows.size, bool)
                if is_p.any():
                    sel = np.flatnonzero(is_p)
                    images[sel] = poisoner.apply(split, rows[sel], images[sel], index[sel])
                    labels = labels.copy()
                    labels[sel] = recipe.target_class
                keep = np.flatnonzero(ok)
                writer.append(split, {"images": images[keep], "labels": labels[keep], "original_labels": orig[keep],
                                      "is_poisoned": is_p[keep], "provenance": prov[keep], "index": index[keep]})
                written[split] += keep.size
                written[f"{split}_poisoned"] += int(is_p.sum())
                if split == "test":
                    tsel = np.flatnonzero(ok & is_source_test[rows])
                    if tsel.size:
                        trig = poisoner.apply("test", rows[tsel], images[tsel], index[tsel])
                        writer.append("test_triggered", {
                            "images": trig, "labels": np.full(tsel.size, recipe.target_class, np.int64),
                            "original_labels": orig[tsel], "is_poisoned": np.ones(tsel.size, bool),
                            "provenance": prov[tsel], "index": index[tsel]})
                        written["test_triggered"] += tsel.size
                bar.update(rows.size)
            if written["test_triggered"] == 0:
                raise ValueError(f"no test images of the source class(es) {sources[:10]} could be written: "
                                 "test_triggered would be empty")
            recipe_d["n_poisoned"] = int(written["train_poisoned"])
            build_info.update({
                "source_spec": source_spec, "source_description": src.description, "seed": int(seed),
                "limit_per_class": limit_per_class, "strict": bool(strict), "detect_eyes": bool(detect_eyes),
                "rows_written": dict(written),
                "skipped_unreadable": dict(src.skipped), "skipped_examples": src.skipped_examples,
                "eye_location": {m: poisoner.eye_methods[m] for m in EYE_METHODS if poisoner.eye_methods[m]},
                "provenance_note": src.config.get("provenance", {"gtsrb": "the GTSRB track", "synth-signs":
                                                  "the synthetic track (30 frames of one sign)", "synth-faces":
                                                  "the synthetic session (frames of one identity)"}.get(src.name, "source group")),
                "poison_provenance_note": (f"their own groups of {group} (attacker-contributed sources)"
                                           if poison_provenance == "own" else "kept in the groups of their source images"),
                "licence_note": _LICENCE.get(src.name, "Synthetic images generated by datasets_gen; no real photographs."),
            })
            if trigger.placement.kind == "eyes":
                build_info["eye_locator"] = eye_location_info(detect_eyes)
            writer.set_attrs({"recipe": recipe_d, "build": {k: v for k, v in build_info.items()
                                                            if k not in ("source_description", "licence_note")}})
    finally:
        bar.close()
        poisoner.close()
    return out
