"""Findings: sentences computed from the study's numbers, never written in advance.

Each function below reads the aggregated cells (mean over seeds, see
:func:`backdoorlab.experiments.records.aggregate_cells`) and states what they show — which
defence lowered attack success most per setting, which order of a combination did better, how
Activation Clustering's removals move with the poison share, which pruned layer worked better,
what the Fine-Pruning threshold changed. Comparisons use a tolerance (:data:`TIE_POINTS`
percentage points): closer results are called a tie instead of a win, because with few seeds
differences of that size are noise. A sentence is produced only when the cells it needs exist.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from .records import pct, signed_points

TIE_POINTS = 1.0  # differences in percentage points below this are reported as ties
ATTACK_SUCCEEDS = 0.90  # attack success at or above this counts as a working backdoor


def _p(x: float | None) -> str:
    return f"{pct(x)} %"


def _share(x: float) -> str:
    return f"{round(100 * x, 4):g} %"


def _label(r: Mapping[str, Any]) -> str:
    return r.get("defence_label") or r["defence"]


def _seeds_note(recs: Sequence[Mapping[str, Any]]) -> str:
    n = max((r.get("n_seeds") or 1) for r in recs) if recs else 1
    return "" if n <= 1 else f" (mean of {n} seeds)"


def attack_findings(agg: Sequence[Mapping[str, Any]]) -> list[str]:
    out = []
    clean = {r["setting"]: r for r in agg if r["kind"] == "clean"}
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for r in agg:
        if r["kind"] == "attack":
            groups.setdefault((r["dataset"], r["trigger"]), []).append(r)
    for (dataset, trigger), recs in groups.items():
        recs = sorted(recs, key=lambda r: r["poison_share"])
        deltas = [r["accuracy"] - clean[r["setting"]]["accuracy"] for r in recs if r["setting"] in clean]
        cost = ""
        if deltas:
            lo, hi = min(deltas), max(deltas)
            cost = (f"; clean accuracy changed by {signed_points(lo)} points against the clean model" if len(deltas) == 1
                    else f"; clean accuracy changed by {signed_points(lo)} to {signed_points(hi)} points against the "
                         f"clean model")
        if len(recs) == 1:
            r = recs[0]
            s = (f"Attack on {dataset} with the {trigger} trigger: at {_share(r['poison_share'])} poisoned, "
                 f"{_p(r['attack_success'])} of the triggered test images were classified as the target{cost}.")
        else:
            first = next((r for r in recs if r["attack_success"] >= ATTACK_SUCCEEDS), None)
            reach = (f"it first reached {_p(ATTACK_SUCCEEDS)} at {_share(first['poison_share'])} poisoned"
                     if first else f"it stayed below {_p(ATTACK_SUCCEEDS)} at every share tried")
            s = (f"Attack on {dataset} with the {trigger} trigger: attack success went from "
                 f"{_p(recs[0]['attack_success'])} at {_share(recs[0]['poison_share'])} poisoned to "
                 f"{_p(recs[-1]['attack_success'])} at {_share(recs[-1]['poison_share'])}; {reach}{cost}.")
        out.append(s + _seeds_note(recs))
    return out


def best_defence_findings(agg: Sequence[Mapping[str, Any]]) -> list[str]:
    out = []
    by_setting: dict[str, list[Mapping[str, Any]]] = {}
    for r in agg:
        by_setting.setdefault(r["setting"], []).append(r)
    for setting, recs in by_setting.items():
        before = next((r for r in recs if r["kind"] == "attack"), None)
        defended = [r for r in recs if r["kind"] in ("filter", "repair", "combination")]
        if before is None or len(defended) < 2:
            continue
        ranked = sorted(defended, key=lambda r: (r["attack_success"], -r["accuracy"]))
        best, worst = ranked[0], ranked[-1]
        ties = [r for r in ranked[1:] if 100 * (r["attack_success"] - best["attack_success"]) < TIE_POINTS]
        tie_txt = "" if not ties else (" (within " + f"{TIE_POINTS:g} point of it: " +
                                       ", ".join(f"{_label(r)} {_p(r['attack_success'])}" for r in ties) + ")")
        out.append(f"On {setting}, {_label(best)} lowered attack success the most, from {_p(before['attack_success'])} "
                   f"to {_p(best['attack_success'])}, at a clean-accuracy change of "
                   f"{signed_points(best['accuracy'] - before['accuracy'])} points{tie_txt}; the least effective "
                   f"was {_label(worst)} ({_p(worst['attack_success'])}).")
    return out


def order_findings(agg: Sequence[Mapping[str, Any]]) -> list[str]:
    """For every pair of combinations that are the same steps in reverse order (AC→FP vs FP→AC)."""
    out = []
    combos = [r for r in agg if r["kind"] == "combination"]
    done = set()
    for a in combos:
        steps = a["pipeline"].split(">")
        rev = ">".join(reversed(steps))
        for b in combos:
            if b["setting"] != a["setting"] or b["pipeline"] != rev or b is a:
                continue
            pair = (a["setting"], frozenset((a["defence"], b["defence"])))
            if pair in done:
                continue
            done.add(pair)
            diff = 100 * (a["attack_success"] - b["attack_success"])
            head = (f"On {a['setting']}, {_label(a)} left an attack success of {_p(a['attack_success'])} "
                    f"(clean accuracy {_p(a['accuracy'])}) and {_label(b)} {_p(b['attack_success'])} "
                    f"(clean accuracy {_p(b['accuracy'])}): ")
            if abs(diff) < TIE_POINTS:
                tail = f"both orders lowered attack success about equally (within {TIE_POINTS:g} point)."
            else:
                win, lose = (a, b) if diff < 0 else (b, a)
                tail = (f"{_label(win)} lowered attack success more, by {abs(diff):.1f} points, "
                        f"at {signed_points(win['accuracy'] - lose['accuracy'])} points of clean accuracy relative "
                        f"to {_label(lose)}.")
            out.append(head + tail + _seeds_note([a, b]))
    return out


def combination_vs_parts_findings(agg: Sequence[Mapping[str, Any]]) -> list[str]:
    """Did a combination beat each of its steps run alone (with the same parameters)?"""
    out = []
    idx: dict[str, list[Mapping[str, Any]]] = {}
    for r in agg:
        idx.setdefault(r["setting"], []).append(r)
    for r in agg:
        if r["kind"] != "combination":
            continue
        parts = []
        for step in r["pipeline"].split(">"):
            cands = [c for c in idx[r["setting"]] if c["pipeline"] == step and c["kind"] in ("filter", "repair")]
            if step == "fp":
                cands = [c for c in cands if c.get("layer") == r.get("layer") and c.get("fp_threshold") == r.get("fp_threshold")]
            else:
                cands = [c for c in cands if c["defence"] == step] or cands[:1]
            if cands:
                parts.append(cands[0])
        if len(parts) < 2:
            continue
        best_part = min(parts, key=lambda c: c["attack_success"])
        diff = 100 * (r["attack_success"] - best_part["attack_success"])
        alone = ", ".join(f"{_label(c)} alone {_p(c['attack_success'])}" for c in parts)
        if abs(diff) < TIE_POINTS:
            verdict = f"no better than its best step alone (within {TIE_POINTS:g} point)"
        elif diff < 0:
            verdict = f"{abs(diff):.1f} points below its best step alone"
        else:
            verdict = f"{diff:.1f} points above its best step alone"
        out.append(f"On {r['setting']}, {_label(r)} ended at an attack success of {_p(r['attack_success'])} "
                   f"({alone}): {verdict}.")
    return out


def ac_findings(agg: Sequence[Mapping[str, Any]]) -> list[str]:
    out = []
    groups: dict[tuple[str, str, str], list[Mapping[str, Any]]] = {}
    for r in agg:
        if r["kind"] == "filter" and r["pipeline"] == "ac" and r.get("removed_poisoned_share") is not None:
            groups.setdefault((r["dataset"], r["trigger"], _label(r)), []).append(r)
    for (dataset, trigger, lab), recs in groups.items():
        recs = sorted(recs, key=lambda r: r["poison_share"])
        rp = [r["removed_poisoned_share"] for r in recs]
        rc = [r["removed_clean_share"] for r in recs if r.get("removed_clean_share") is not None]
        if len(recs) == 1:
            r = recs[0]
            out.append(f"{lab} on {dataset} / {trigger} at {_share(r['poison_share'])} poisoned removed "
                       f"{_p(r['removed_poisoned_share'])} of the poisoned and {_p(r.get('removed_clean_share'))} of the "
                       f"clean training samples; attack success after retraining: {_p(r['attack_success'])}.")
            continue
        if abs(rp[-1] - rp[0]) * 100 < TIE_POINTS:
            how = (f"removed about the same share of the poisoned samples at {_share(recs[0]['poison_share'])} "
                   f"({_p(rp[0])}) and at {_share(recs[-1]['poison_share'])} poisoned ({_p(rp[-1])})")
        else:
            trend = "rose" if rp[-1] > rp[0] else "fell"
            how = (f"the share of poisoned samples removed {trend} from {_p(rp[0])} at "
                   f"{_share(recs[0]['poison_share'])} poisoned to {_p(rp[-1])} at {_share(recs[-1]['poison_share'])}")
        out.append(f"{lab} on {dataset} / {trigger}: {how}, while it removed {_p(min(rc)) if rc else '–'} to "
                   f"{_p(max(rc)) if rc else '–'} of the clean samples; attack success after retraining ranged "
                   f"from {_p(min(r['attack_success'] for r in recs))} to {_p(max(r['attack_success'] for r in recs))}.")
    return out


def filter_summary_findings(agg: Sequence[Mapping[str, Any]]) -> list[str]:
    out = []
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for r in agg:
        if r["kind"] == "filter" and r.get("removed_poisoned_share") is not None:
            groups.setdefault(r["defence"], []).append(r)
    for d, recs in groups.items():
        if len(recs) < 2:
            continue
        n = len(recs)
        mp = sum(r["removed_poisoned_share"] for r in recs) / n
        mc = sum(r["removed_clean_share"] or 0.0 for r in recs) / n
        ma = sum(r["attack_success"] for r in recs) / n
        out.append(f"Across {n} settings, {_label(recs[0])} removed on average {_p(mp)} of the poisoned and "
                   f"{_p(mc)} of the clean training samples, leaving a mean attack success of {_p(ma)}.")
    return out


def fp_layer_findings(agg: Sequence[Mapping[str, Any]]) -> list[str]:
    out = []
    by_setting: dict[str, dict[tuple[str, float], Mapping[str, Any]]] = {}
    for r in agg:
        if r["kind"] == "repair" and r["pipeline"] == "fp":
            by_setting.setdefault(r["setting"], {})[(r.get("layer"), r.get("fp_threshold"))] = r
    for setting, recs in by_setting.items():
        for (layer, thr), last in recs.items():
            if layer != "last_conv":
                continue
            second = recs.get(("second_last_conv", thr))
            if second is None:
                continue
            diff = 100 * (last["attack_success"] - second["attack_success"])
            desc = (f"On {setting}, Fine-Pruning the last conv layer ({_count(last)} channels pruned) left "
                    f"{_p(last['attack_success'])} attack success and the second-to-last "
                    f"({_count(second)} pruned) {_p(second['attack_success'])}: ")
            if abs(diff) < TIE_POINTS:
                desc += f"both layers did about equally well (within {TIE_POINTS:g} point)."
            else:
                which = "the last" if diff < 0 else "the second-to-last"
                desc += f"pruning {which} conv layer lowered attack success more, by {abs(diff):.1f} points."
            out.append(desc)
    return out


def _count(r: Mapping[str, Any]) -> str:
    n, c = r.get("neurons_pruned"), r.get("n_channels")
    if n is None:
        return "?"
    return f"{n:.0f}/{c:.0f}" if c is not None else f"{n:.0f}"


def _change(what: str, a: str, b: str) -> str:
    return f"left {what} at {a}" if a == b else f"changed {what} from {a} to {b}"


def threshold_findings(agg: Sequence[Mapping[str, Any]]) -> list[str]:
    out = []
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for r in agg:
        if r["kind"] == "repair" and r.get("fp_threshold") is not None:
            groups.setdefault((r["setting"], r.get("layer") or "?"), []).append(r)
    for (setting, layer), recs in groups.items():
        recs = sorted(recs, key=lambda r: r["fp_threshold"])
        if len({r["fp_threshold"] for r in recs}) < 2:
            continue
        lo, hi = recs[0], recs[-1]
        changes = [_change("the channels pruned", _count(lo), _count(hi)),
                   _change("clean accuracy", _p(lo["accuracy"]), _p(hi["accuracy"])),
                   _change("attack success", _p(lo["attack_success"]), _p(hi["attack_success"]))]
        out.append(f"On {setting} ({layer}), raising the Fine-Pruning threshold from {_share(lo['fp_threshold'])} to "
                   f"{_share(hi['fp_threshold'])} " + ", ".join(changes[:-1]) + " and " + changes[-1] + ".")
    return out


def compute_findings(agg: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every finding the aggregated cells support, in report order."""
    out: list[str] = []
    for f in (attack_findings, best_defence_findings, order_findings, combination_vs_parts_findings,
              ac_findings, filter_summary_findings, fp_layer_findings, threshold_findings):
        out.extend(f(agg))
    return out
