"""What makes a variant publishable as is: the dataset card (Markdown) and the preview grid (PNG).

The preview is laid out like the paper's Figs. 4–6: a row of clean source-class test images, the
same images with the trigger (from ``test_triggered``), and a row of poisoned training images
(relabelled to the target). The card says what the file is, how it was made (source, recipe,
trigger, seed, generator version), what it holds (counts per split, poisoned rows, provenance
groups), how to load and verify it, and what it must not be used for. Both can be produced from
the builder's temporary file and written to temporaries (``dest``) that
:func:`datasets_gen.variant_io.commit_variant` publishes together with the file; without ``dest``
they are written atomically beside the variant.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import cv2
import h5py
import numpy as np

from datasets_gen.atomic import atomic_path, atomic_write_text
from datasets_gen.schema import SPLITS
from datasets_gen.variant_io import read_attrs, sha256_file, sidecar_paths, sidecar_tmp_paths, split_counts

_LABEL_W = 150


def _tile(img: np.ndarray, size: int) -> np.ndarray:
    h, w = img.shape[:2]
    scale = size / max(h, w)
    interp = cv2.INTER_NEAREST if scale >= 1 else cv2.INTER_AREA
    out = cv2.resize(img, (max(1, int(round(w * scale))), max(1, int(round(h * scale)))), interpolation=interp)
    pad = np.full((size, size, 3), 255, np.uint8)
    y, x = (size - out.shape[0]) // 2, (size - out.shape[1]) // 2
    pad[y:y + out.shape[0], x:x + out.shape[1]] = out
    return pad


def _row(label: str, images: list[np.ndarray], captions: list[str], size: int, n_cols: int) -> np.ndarray:
    cap_h = 18
    row = np.full((size + cap_h + 6, _LABEL_W + n_cols * (size + 4), 3), 255, np.uint8)
    for k, line in enumerate(label.split("\n")):
        cv2.putText(row, line, (6, 22 + 18 * k), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    for j, (img, cap) in enumerate(zip(images, captions)):
        x = _LABEL_W + j * (size + 4)
        row[3:3 + size, x:x + size] = _tile(img, size)
        cv2.putText(row, cap[:max(4, size // 7)], (x + 2, size + 3 + 14), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (40, 40, 40), 1, cv2.LINE_AA)
    return row


def preview_grid(data_path: str | os.PathLike, n_cols: int = 8, tile: int = 96) -> np.ndarray:
    """The preview image (RGB uint8) of a variant file.

    Rows: clean source-class test images; the same with the trigger; poisoned training images
    (caption: original -> new label); clean training images of other classes for comparison.
    """
    attrs = read_attrs(data_path)
    names = attrs["class_names"]

    def short(c: int) -> str:
        return f"{c}:{names[c]}"[:16]

    rows = []
    with h5py.File(data_path, "r") as f:
        tt, test, train = f["test_triggered"], f["test"], f["train"]
        k = min(n_cols, tt["images"].shape[0])
        if k:
            # spread the examples over the source classes
            pick = np.linspace(0, tt["images"].shape[0] - 1, k).round().astype(int)
            trig = tt["images"][np.unique(pick)]
            idx = tt["index"][np.unique(pick)]
            test_index = test["index"][()]
            pos = {int(v): i for i, v in enumerate(test_index)}
            clean_rows = [pos[int(i)] for i in idx if int(i) in pos]
            if len(clean_rows) == len(idx):
                clean = test["images"][sorted(clean_rows)] if clean_rows == sorted(clean_rows) else \
                    np.stack([test["images"][r] for r in clean_rows])
                orig = tt["original_labels"][np.unique(pick)]
                rows.append(_row("clean test\n(source class)", list(clean), [short(int(c)) for c in orig], tile, n_cols))
            rows.append(_row(f"triggered\n-> {attrs['target_class']}", list(trig),
                             [short(int(c)) for c in tt["original_labels"][np.unique(pick)]], tile, n_cols))
        poisoned = np.flatnonzero(train["is_poisoned"][()])
        if poisoned.size:
            pick = poisoned[np.linspace(0, poisoned.size - 1, min(n_cols, poisoned.size)).round().astype(int)]
            pick = np.unique(pick)
            imgs = [train["images"][int(r)] for r in pick]
            caps = [f"{int(train['original_labels'][int(r)])}->{int(train['labels'][int(r)])}" for r in pick]
            rows.append(_row("poisoned\ntraining", imgs, caps, tile, n_cols))
        labels = train["original_labels"][()]
        clean_mask = ~train["is_poisoned"][()]
        classes = np.unique(labels[clean_mask])
        if classes.size:
            chosen = classes[np.linspace(0, classes.size - 1, min(n_cols, classes.size)).round().astype(int)]
            rws = [int(np.flatnonzero((labels == c) & clean_mask)[0]) for c in np.unique(chosen)]
            rows.append(_row("clean\ntraining", [train["images"][r] for r in rws], [short(int(labels[r])) for r in rws],
                             tile, n_cols))
    width = max(r.shape[1] for r in rows)
    header = np.full((34, width, 3), 255, np.uint8)
    trig = attrs["trigger"].get("spec", "") if isinstance(attrs["trigger"], dict) else ""
    title = f"{attrs['recipe'].get('name', 'variant')}  |  {attrs['source']}  |  trigger {trig}  |  seed {attrs['seed']}"
    cv2.putText(header, title[:110], (6, 23), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    padded = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    return np.concatenate([header, *padded], axis=0)


def write_preview(path: str | os.PathLike, *, data_path: str | os.PathLike | None = None,
                  dest: str | os.PathLike | None = None, **kw: Any) -> Path:
    """Write ``<stem>.preview.png`` for the variant at ``path`` (read from ``data_path`` if given).

    ``dest`` (ending in ``.png``): write there instead, a temporary the caller publishes.
    """
    grid = cv2.cvtColor(preview_grid(data_path if data_path is not None else path, **kw), cv2.COLOR_RGB2BGR)
    if dest is not None:
        dest = Path(dest)
        if dest.suffix != ".png":
            raise ValueError(f"preview destination must end in .png (OpenCV picks the encoder by it), got {dest}")
        if not cv2.imwrite(str(dest), grid):
            raise OSError(f"could not write the preview {dest}")
        return dest
    out = sidecar_paths(path)["preview"]
    with atomic_path(out, tmp=sidecar_tmp_paths(path)["preview"]) as tmp:
        if not cv2.imwrite(str(tmp), grid):
            raise OSError(f"could not write the preview {tmp}")
    return out


def _fmt_share(recipe: Mapping[str, Any]) -> str:
    of = recipe.get("share_of", "source_class").replace("_", " ")
    nominal = f"{100 * float(recipe['share']):g} % of the {of}"
    if recipe.get("count") is not None:
        nominal = f"exactly {recipe['count']} images (the setting's nominal share: {nominal})"
    if recipe.get("share_achieved") is not None:
        nominal += f"; achieved {100 * float(recipe['share_achieved']):.2f} % of the {of}"
    return nominal


_EYE_METHOD_WORDS = {"known": "known to the source", "landmarks": "by facial landmarks (dlib 5-point)",
                     "haar": "by OpenCV Haar cascades", "canonical": "at the canonical position of the alignment"}


def _eye_lines(build: Mapping[str, Any]) -> list[str]:
    """Card lines saying where the eyes for an ``@eyes`` trigger came from (none for other placements)."""
    locator, counts = build.get("eye_locator"), dict(build.get("eye_location") or {})
    if not locator:
        return []
    total = sum(counts.values())
    parts = [f"{n} ({100 * n / total:.1f} %) {_EYE_METHOD_WORDS.get(m, m)}" for m, n in counts.items() if n] or ["none"]
    lines = [f"- Eyes for the trigger ({total} images): " + ", ".join(parts) +
             f"; detectors tried: {' > '.join(locator.get('chain', []))}"]
    if locator.get("note"):
        lines.append(f"- Eye location note: {locator['note']}")
    return lines


def card_markdown(path: str | os.PathLike, *, data_path: str | os.PathLike | None = None,
                  build: Mapping[str, Any] | None = None, sha256: str | None = None) -> str:
    """The dataset card text for the variant at ``path`` (read from ``data_path`` if given).

    ``sha256``: the file's digest when the caller has it already (the manifest's), saving a read.
    """
    final = Path(path)
    src = Path(data_path) if data_path is not None else final
    digest = sha256 if sha256 is not None else sha256_file(src)
    a = read_attrs(src)
    r = a["recipe"]
    counts = split_counts(src)
    names = a["class_names"]
    sources = a["source_classes"]
    src_txt = (f"all {len(sources)} classes except the target" if r.get("source_classes") == "all"
               else ", ".join(f"{c} ({names[c]})" for c in sources))
    build = dict(build or {})
    lines = [
        f"# {r.get('name', final.stem)} — poisoned variant of `{a['source']}`",
        "",
        "> **Contains deliberately poisoned (backdoored) training data.** Made for research on backdoor "
        "attacks and defences; do not train production models on it.",
        "",
        "## Summary",
        "",
        f"- File: `{final.name}` (SHA-256 `{digest}`; verify with "
        "`datasets_gen.variant_io.verify(path)`)",
        f"- Source: `{a['source']}` — {build.get('source_description', '').strip() or 'see the source config below'}",
        f"- Classes: {a['n_classes']}; image shape {tuple(a['image_shape'])} (uint8 RGB, NHWC)",
        f"- Attack: trigger `{a['trigger'].get('spec', '')}` (placement `{a['trigger'].get('placement', '')}`) on "
        f"{src_txt}; poisoned images relabelled to {a['target_class']} ({names[a['target_class']]})",
        f"- Poison share: {_fmt_share(r)} → {counts['train']['n_poisoned']} poisoned training images "
        f"(requested {r.get('n_poisoned_requested', counts['train']['n_poisoned'])})",
        *_eye_lines(build),
        f"- Seed {a['seed']}; generator `datasets_gen` {a['generator_version']}",
    ]
    if r.get("notes"):
        lines += [f"- Notes: {r['notes']}"]
    lines += ["", "## Splits", "", "| split | rows | poisoned | provenance groups |", "|---|---:|---:|---:|"]
    for s in SPLITS:
        c = counts[s]
        lines.append(f"| `{s}` | {c['n']} | {c['n_poisoned']} | {c['n_provenance']} |")
    lines += [
        "",
        "`train`: training rows, the poisoned ones carry the trigger and the target label; `test`: clean test "
        "rows; `clean`: held-out clean rows for the defender (Fine-Pruning, Data Provenance); `test_triggered`: "
        "a triggered copy of every source-class test image, labelled with the target — attack success is the "
        "share of it predicted as the target. Per-class counts are in the manifest.",
        "",
        "## Provenance",
        "",
        f"Every row has an integer `provenance` id: {build.get('provenance_note', 'the source group of the row')}. "
        f"Poisoned training rows: {build.get('poison_provenance_note', '')}",
        "",
        "## Schema",
        "",
        "Each split has `images` uint8 (N, H, W, 3), `labels` int64, `original_labels` int64, `is_poisoned` bool, "
        "`provenance` int32 and `index` int64 (row in the source data set). Root attributes hold the recipe, "
        "trigger, class names, seed, generator version and the source configuration (JSON). See docs/datasets.md.",
        "",
        "```python",
        "import h5py",
        f"with h5py.File('{final.name}') as f:",
        "    x, y = f['train/images'][:], f['train/labels'][:]",
        "```",
        "",
        "## Build",
        "",
        "```json",
        json.dumps({k: v for k, v in build.items() if k not in ("source_description",)}, indent=2, default=str),
        "```",
        "",
        f"![preview]({sidecar_paths(final)['preview'].name})",
        "",
        "## Licence and origin",
        "",
        build.get("licence_note", "Synthetic images generated by datasets_gen; no real photographs."),
        "",
    ]
    return "\n".join(lines)


def write_card(path: str | os.PathLike, *, data_path: str | os.PathLike | None = None,
               build: Mapping[str, Any] | None = None, dest: str | os.PathLike | None = None,
               sha256: str | None = None) -> Path:
    """Write ``<stem>.CARD.md`` for the variant at ``path`` (to ``dest``, a temporary, if given)."""
    text = card_markdown(path, data_path=data_path, build=build, sha256=sha256)
    if dest is not None:
        Path(dest).write_text(text, encoding="utf-8")
        return Path(dest)
    return atomic_write_text(sidecar_paths(path)["card"], text)
