"""The report's figures (matplotlib, Agg canvas, PNG), drawn from the aggregated cells.

* ``fig1_attack.png`` — like the paper's Fig. 1: clean accuracy and attack success of the
  poisoned model against the poison share, one line per (data set, trigger); the clean model's
  accuracy dashed for reference.
* ``fig2_ac.png`` — like Fig. 2: Activation Clustering's removed poisoned and removed clean
  samples (%) and the attack success after AC against the poison share, one line per analysis
  (the paper's size metric and our silhouette analysis).
* ``fig3_fp_threshold.png`` — like Fig. 3: Fine-Pruning's accuracy-drop threshold (2/4/6 %)
  against clean accuracy and attack success after pruning and fine-tuning, per setting and layer.
* ``fig4_defences.png`` — an overview: attack success (left) and clean accuracy (right) after
  every defence, per setting — the trade-off side by side;
* ``fig7_channels_last_conv.png``, ``fig8_channels_second_last_conv.png`` — like the paper's
  Figs. 7/8: the poisoned model's mean activation per channel of the last and the second-to-last
  conv layer, over clean source-class test images and over their triggered copies, channels in
  the order Fine-Pruning removes them (least active on clean inputs first). Channels that are
  dormant on clean inputs but fire on the trigger are what Fine-Pruning hopes to remove.

With several seeds, points and bars are means and the error bars one standard deviation; the
channel figures show one seed per setting (channel numbers mean nothing across models).

Figures are built on :class:`matplotlib.figure.Figure` with the Agg canvas directly, so drawing
never touches pyplot's global state or the user's chosen backend, and written atomically.
A figure with no cells to draw is not written; the report says so instead.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from datasets_gen.atomic import atomic_write_bytes
from datasets_gen.variant_io import read_split

from .claims import DORMANT_FRACTION, dormant_share

FIGURES: dict[str, dict[str, str]] = {
    "fig1_attack": {"title": "Fig. 1: the attack vs poison share",
                    "caption": "Clean test accuracy (left) and attack success (right) of the poisoned model against "
                               "the poison share, per trigger; dashed: the clean model's accuracy."},
    "fig2_ac": {"title": "Fig. 2: Activation Clustering vs poison share",
                "caption": "Share of the poisoned (left) and clean (middle) training samples AC removed, and the "
                           "attack success after retraining (right), against the poison share."},
    "fig3_fp_threshold": {"title": "Fig. 3: Fine-Pruning threshold",
                          "caption": "Clean accuracy (left) and attack success (right) after Fine-Pruning with an "
                                     "accuracy-drop threshold of 2/4/6 %, per setting and pruned layer; dotted: "
                                     "the poisoned model before pruning."},
    "fig4_defences": {"title": "Overview: attack success and clean accuracy after each defence",
                      "caption": "Attack success (left) on the triggered test images and clean test accuracy (right) "
                                 "after each defence, per setting; error bars: one standard deviation over seeds; "
                                 "dashed: the clean model's accuracy."},
    "fig7_channels_last_conv": {
        "title": "Fig. 7: mean activation per channel, last conv layer",
        "caption": "The poisoned model's mean activation of every channel of the last conv layer over the clean "
                   "source-class test images and over their triggered copies, channels sorted by their clean "
                   "activation (Fine-Pruning's order: left ones are pruned first); one seed per setting. The "
                   "percentage: the share of the trigger's extra activation (triggered − clean, where positive) in "
                   f"channels dormant on clean inputs (clean mean ≤ {100 * DORMANT_FRACTION:g} % of the layer's "
                   "largest)."},
    "fig8_channels_second_last_conv": {
        "title": "Fig. 8: mean activation per channel, second-to-last conv layer",
        "caption": "As Fig. 7 for the second-to-last conv layer."},
}
#: Settings drawn in the channel figures (one panel each); settings with a paper row come first.
MAX_CHANNEL_PANELS = 6
_DPI = 110


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, bbox_inches="tight", metadata={"Software": None})
    return atomic_write_bytes(path, buf.getvalue())


def _trigger_groups(recs: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for r in recs:
        groups.setdefault(f"{r['dataset']}: {r['trigger']}", []).append(r)
    for g in groups.values():
        g.sort(key=lambda r: r["poison_share"])
    return groups


def _pc(v: float | None) -> float:
    return float("nan") if v is None else 100.0 * v


def _line(ax, x, recs: Sequence[Mapping[str, Any]], f: str, style: str, color: str, label: str) -> None:
    """Means of ``f`` (in %) against ``x``, with one-sd error bars when there are several seeds."""
    ys = [_pc(r.get(f)) for r in recs]
    err = [0.0 if r.get(f + "_sd") is None else 100.0 * r[f + "_sd"] for r in recs]
    if any(err):
        ax.errorbar(x, ys, yerr=err, fmt=style, color=color, label=label, capsize=3, lw=1.2)
    else:
        ax.plot(x, ys, style, color=color, label=label)


def fig1_attack(agg: Sequence[Mapping[str, Any]], path: Path) -> Path | None:
    attack = [r for r in agg if r["kind"] == "attack"]
    if not attack:
        return None
    clean = {r["setting"]: r for r in agg if r["kind"] == "clean"}
    fig = Figure(figsize=(11, 4))
    ax_acc, ax_asr = fig.subplots(1, 2)
    for i, (name, recs) in enumerate(_trigger_groups(attack).items()):
        x = [100 * r["poison_share"] for r in recs]
        color = f"C{i % 10}"
        _line(ax_acc, x, recs, "accuracy", "o-", color, name)
        _line(ax_asr, x, recs, "attack_success", "o-", color, name)
        base = [clean[r["setting"]]["accuracy"] for r in recs if r["setting"] in clean]
        if base:
            ax_acc.axhline(100 * sum(base) / len(base), color=color, ls="--", lw=0.8)
    ax_acc.set(xlabel="poison share (%)", ylabel="clean test accuracy (%)", title="clean accuracy")
    ax_asr.set(xlabel="poison share (%)", ylabel="attack success (%)", title="attack success", ylim=(-2, 102))
    ax_asr.legend(fontsize=8, loc="lower right")
    for ax in (ax_acc, ax_asr):
        ax.grid(alpha=0.3)
    return _save(fig, path)


def fig2_ac(agg: Sequence[Mapping[str, Any]], path: Path) -> Path | None:
    ac = [r for r in agg if r["kind"] == "filter" and r["pipeline"] == "ac"]
    if not ac:
        return None
    fig = Figure(figsize=(14, 4))
    axes = fig.subplots(1, 3)
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for r in ac:
        groups.setdefault(f"{r['dataset']}: {r['trigger']} ({r.get('defence_label') or r['defence']})", []).append(r)
    for i, (name, recs) in enumerate(groups.items()):
        recs = sorted(recs, key=lambda r: r["poison_share"])
        x = [100 * r["poison_share"] for r in recs]
        for ax, f in zip(axes, ("removed_poisoned_share", "removed_clean_share", "attack_success")):
            _line(ax, x, recs, f, "o-", f"C{i % 10}", name)
    for ax, title in zip(axes, ("removed poisoned (% of poisoned)", "removed clean (% of clean)",
                                "attack success after AC (%)")):
        ax.set(xlabel="poison share (%)", title=title, ylim=(-2, 102))
        ax.grid(alpha=0.3)
    axes[2].legend(fontsize=8)
    return _save(fig, path)


def fig3_fp_threshold(agg: Sequence[Mapping[str, Any]], path: Path) -> Path | None:
    fp = [r for r in agg if r["kind"] == "repair" and r.get("fp_threshold") is not None]
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for r in fp:
        groups.setdefault((r["setting"], r.get("layer") or "?"), []).append(r)
    # Only settings swept over more than one threshold make a curve.
    groups = {k: sorted(v, key=lambda r: r["fp_threshold"]) for k, v in groups.items()
              if len({r["fp_threshold"] for r in v}) > 1}
    if not groups:
        return None
    before = {r["setting"]: r for r in agg if r["kind"] == "attack"}
    fig = Figure(figsize=(11, 4))
    ax_acc, ax_asr = fig.subplots(1, 2)
    settings = sorted({s for s, _ in groups})
    for (setting, layer), recs in groups.items():
        color = f"C{settings.index(setting) % 10}"
        style = "o-" if layer == "last_conv" else "s--"
        x = [100 * r["fp_threshold"] for r in recs]
        lab = f"{setting} ({layer})"
        _line(ax_acc, x, recs, "accuracy", style, color, lab)
        _line(ax_asr, x, recs, "attack_success", style, color, lab)
        if setting in before:
            ax_acc.axhline(_pc(before[setting]["accuracy"]), color=color, ls=":", lw=0.8)
            ax_asr.axhline(_pc(before[setting]["attack_success"]), color=color, ls=":", lw=0.8)
    ax_acc.set(xlabel="pruning threshold: allowed clean-accuracy drop (%)", ylabel="clean test accuracy (%)",
               title="clean accuracy after FP")
    ax_asr.set(xlabel="pruning threshold: allowed clean-accuracy drop (%)", ylabel="attack success (%)",
               title="attack success after FP", ylim=(-2, 102))
    ax_asr.legend(fontsize=8)
    for ax in (ax_acc, ax_asr):
        ax.grid(alpha=0.3)
    return _save(fig, path)


def _sd(r: Mapping[str, Any] | None, f: str) -> float:
    v = None if r is None else r.get(f + "_sd")
    return 0.0 if v is None else 100.0 * v


def fig4_defences(agg: Sequence[Mapping[str, Any]], path: Path) -> Path | None:
    recs = [r for r in agg if r["kind"] != "clean"]
    if not recs:
        return None
    settings = list(dict.fromkeys(r["setting"] for r in recs))
    defences = [d for d in dict.fromkeys(r["defence"] for r in recs) if not any(x.get("sweep") for x in recs
                                                                                 if x["defence"] == d)]
    label = {r["defence"]: r.get("defence_label") or r["defence"] for r in recs}
    idx = {(r["setting"], r["defence"]): r for r in recs}
    clean = {r["setting"]: r for r in agg if r["kind"] == "clean"}
    width_in = max(6.0, 1.1 * len(settings) * max(1, len(defences)) / 3 + 2)
    fig = Figure(figsize=(2 * width_in, 4.8))
    ax_asr, ax_acc = fig.subplots(1, 2)
    width = 0.8 / max(1, len(defences))
    for j, d in enumerate(defences):
        xs = [i + (j - (len(defences) - 1) / 2) * width for i in range(len(settings))]
        for ax, f in ((ax_asr, "attack_success"), (ax_acc, "accuracy")):
            ys = [_pc(idx[(s, d)][f]) if (s, d) in idx else float("nan") for s in settings]
            err = [_sd(idx.get((s, d)), f) for s in settings]
            ax.bar(xs, ys, width=width, yerr=err if any(err) else None, capsize=2, label=label[d],
                   color=f"C{j % 10}", error_kw={"lw": 0.8})
    for i, s in enumerate(settings):
        if s in clean:  # the clean model's accuracy: what the trade-off is measured against
            ax_acc.hlines(_pc(clean[s]["accuracy"]), i - 0.45, i + 0.45, colors="k", linestyles="--", lw=0.9)
    for ax in (ax_asr, ax_acc):
        ax.set_xticks(range(len(settings)))
        ax.set_xticklabels(settings, rotation=20, ha="right", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    ax_asr.set(ylabel="attack success (%)", ylim=(0, 102), title="attack success after each defence")
    accs = [_pc(r["accuracy"]) for r in recs] + [_pc(r["accuracy"]) for r in clean.values()]
    lo = max(0.0, min(a for a in accs if a == a) - 10.0) if any(a == a for a in accs) else 0.0
    ax_acc.set(ylabel="clean test accuracy (%)", ylim=(lo, 101), title="clean accuracy after each defence "
                                                                     "(dashed: clean model)")
    # below the axes: bars reach 100 % and a legend inside would hide them
    ax_asr.legend(fontsize=8, ncol=min(4, max(1, len(defences))), loc="upper center", bbox_to_anchor=(1.05, -0.22))
    return _save(fig, path)


def _channel_panels(agg: Sequence[Mapping[str, Any]], layer: str) -> list[tuple[str, int, list[float], list[float]]]:
    """(setting, seed, clean means, triggered means) of the undefended models that recorded ``layer``."""
    attack = [r for r in agg if r["kind"] == "attack" and r.get("channel_activity")]
    attack.sort(key=lambda r: r.get("paper_row") is None)  # stable: paper rows first, then grid order
    out = []
    for r in attack:
        for seed in sorted(r["channel_activity"]):
            layers = r["channel_activity"][seed]
            if layer in layers:
                out.append((r["setting"], int(seed), list(layers[layer]["clean"]), list(layers[layer]["triggered"])))
                break
        if len(out) == MAX_CHANNEL_PANELS:
            break
    return out


def _fig_channels(agg: Sequence[Mapping[str, Any]], path: Path, layer: str) -> Path | None:
    panels = _channel_panels(agg, layer)
    if not panels:
        return None
    ncols = min(3, len(panels))
    nrows = -(-len(panels) // ncols)
    fig = Figure(figsize=(4.6 * ncols, 3.2 * nrows), layout="constrained")
    axes = np.asarray(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax, (setting, seed, clean, trig) in zip(axes, panels):
        order = np.argsort(np.asarray(clean), kind="stable")  # Fine-Pruning's order: least active first
        x = np.arange(len(order))
        ax.bar(x, np.asarray(trig)[order], width=1.0, color="C3", alpha=0.55, label="triggered inputs")
        ax.plot(x, np.asarray(clean)[order], color="C0", lw=1.2, label="clean inputs")
        share = dormant_share(clean, trig)
        ax.set(title=f"{setting} (seed {seed})", xlabel="channel, by clean activation (pruned first → last)",
               ylabel="mean activation")
        if share is not None:
            ax.text(0.02, 0.97, f"{100 * share:.0f} % of the trigger's extra activation in dormant channels",
                    transform=ax.transAxes, va="top", fontsize=7)
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    axes[0].legend(fontsize=8)
    return _save(fig, path)


def fig7_channels_last_conv(agg: Sequence[Mapping[str, Any]], path: Path) -> Path | None:
    return _fig_channels(agg, path, "last_conv")


def fig8_channels_second_last_conv(agg: Sequence[Mapping[str, Any]], path: Path) -> Path | None:
    return _fig_channels(agg, path, "second_last_conv")


_DRAW = {"fig1_attack": fig1_attack, "fig2_ac": fig2_ac, "fig3_fp_threshold": fig3_fp_threshold,
         "fig4_defences": fig4_defences, "fig7_channels_last_conv": fig7_channels_last_conv,
         "fig8_channels_second_last_conv": fig8_channels_second_last_conv}
_MISSING = {"fig1_attack": "Not drawn: no undefended poisoned models in this study.",
            "fig2_ac": "Not drawn: Activation Clustering is not in this study.",
            "fig3_fp_threshold": "Not drawn: no setting was pruned at more than one threshold (set fp_thresholds).",
            "fig4_defences": "Not drawn: no defended cells.",
            "fig7_channels_last_conv": "Not drawn: no undefended model recorded its per-channel activations "
                                       "(channel_activity; cells of older runs lack it).",
            "fig8_channels_second_last_conv": "Not drawn: no undefended model recorded its per-channel activations "
                                              "(channel_activity; cells of older runs lack it)."}


def make_figures(agg: Sequence[Mapping[str, Any]], folder: str | Path, *, root: str | Path) -> dict[str, dict[str, str]]:
    """Draw every figure that has data into ``folder``.

    Returns
    -------
    dict
        ``{name: {"title", "caption", "path" (relative to root) or "missing" (why not drawn)}}``,
        in the order of :data:`FIGURES`.
    """
    folder, root = Path(folder), Path(root)
    out: dict[str, dict[str, str]] = {}
    for name, info in FIGURES.items():
        entry = dict(info)
        target = folder / f"{name}.png"
        written = _DRAW[name](agg, target)
        if written is None:
            if target.exists():  # a stale figure from an earlier run of a different grid
                target.unlink()
            entry["missing"] = _MISSING[name]
        else:
            entry["path"] = written.relative_to(root).as_posix()
        out[name] = entry
    return out


def preview_from_variant(variant: str | Path, path: str | Path, *, n: int = 8, title: str = "") -> Path:
    """Draw clean test images (top row) above their triggered copies (bottom row).

    Used when the data-set generator wrote no ``<stem>.preview.png`` beside the variant (the toy
    generator does not): ``test_triggered`` row *i* is the triggered copy of ``test`` row
    ``index[i]``, so each column shows one image without and with the trigger.
    """
    trig = read_split(variant, "test_triggered", fields=["images", "index"])
    test = read_split(variant, "test", fields=["images"])
    k = min(int(n), int(trig["images"].shape[0]))
    if k == 0:
        raise ValueError(f"{variant}: test_triggered is empty, nothing to preview")
    cols = np.linspace(0, trig["images"].shape[0] - 1, k).round().astype(int)
    fig = Figure(figsize=(1.3 * k, 3.0))
    axes = np.asarray(fig.subplots(2, k, squeeze=False))
    for j, i in enumerate(cols):
        axes[0, j].imshow(test["images"][int(trig["index"][i])])
        axes[1, j].imshow(trig["images"][i])
        for ax in axes[:, j]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_ylabel("clean", fontsize=8)
    axes[1, 0].set_ylabel("triggered", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, Path(path))
