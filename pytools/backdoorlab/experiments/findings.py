"""Findings: sentences computed from the study's numbers, never written in advance.

Each function below reads the aggregated cells (see
:func:`backdoorlab.experiments.records.aggregate_cells`) and states what they show — which
defence lowered attack success most per setting, which order of a combination did better, how
Activation Clustering's removals move with the poison share, which pruned layer worked better,
what the Fine-Pruning threshold changed.

A comparison is made **seed by seed** (:func:`paired`): the two defences of one setting ran on the
same variant and poisoned model of each seed, so their difference per seed is what one seed says.
A direction ("A lowered attack success more than B") is stated only when every seed shows it by at
least :data:`TIE_POINTS` points and there are at least :data:`MIN_SEEDS` seeds; when every seed
is within the tolerance the two are called about equal; otherwise — seeds disagree, or too few
seeds — the sentence says *not distinguishable* and gives the per-seed differences. One seed of a
half-trained model can put either defence ahead, so a mean over seeds alone never decides a
direction. Means are printed as mean ± standard deviation over the seeds. A sentence is produced
only when the cells it needs exist.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Hashable, Mapping, Sequence

from . import paper
from .records import pct, signed_points

TIE_POINTS = 1.0  # per-seed differences below this (percentage points) count as no difference
MIN_SEEDS = 2  # a direction needs at least this many seeds, all agreeing
ATTACK_SUCCEEDS = 0.90  # attack success at or above this counts as a working backdoor


# ----------------------------------------------------------------------------------------------
# seed-by-seed comparison


@dataclass(frozen=True)
class Paired:
    """``a - b`` of one field per shared seed, in percentage points (or the field's unit × ``scale``).

    ``verdict``: ``"lower"`` / ``"higher"`` (a below / above b on every seed by at least the
    tolerance, with at least :data:`MIN_SEEDS` seeds), ``"equal"`` (every seed within it),
    ``"mixed"`` (seeds disagree), ``"few"`` (fewer than :data:`MIN_SEEDS` shared seeds) or
    ``"missing"`` (no shared seed has the field).
    """

    seeds: tuple[int, ...]
    diffs: tuple[float, ...]
    verdict: str

    @property
    def n(self) -> int:
        return len(self.diffs)

    @property
    def mean(self) -> float | None:
        return sum(self.diffs) / len(self.diffs) if self.diffs else None

    @property
    def directed(self) -> bool:
        return self.verdict in ("lower", "higher")

    def per_seed(self, unit: str = "points") -> str:
        """'per-seed differences −3.1, +5.2 points' (seed order)."""
        if not self.diffs:
            return "no seed to compare"
        return "per-seed difference" + ("s " if self.n > 1 else " ") + ", ".join(f"{d:+.1f}" for d in self.diffs) \
            + f" {unit}"


def seed_values(rec: Mapping[str, Any], field: str) -> dict[int, float]:
    """``{seed: value}`` of one numeric field of an aggregate (seeds without it left out)."""
    by_seed = rec.get("by_seed")
    if by_seed is None:  # an aggregate from before by_seed existed: its mean is its only seed
        return {} if rec.get(field) is None else {int((rec.get("seeds") or [0])[0]): float(rec[field])}
    return {int(s): float(v[field]) for s, v in by_seed.items() if v.get(field) is not None}


def paired(a: Mapping[str, Any], b: Mapping[str, Any], field: str, *, tol: float = TIE_POINTS,
           scale: float = 100.0, field_b: str | None = None) -> Paired:
    """Compare ``a[field]`` with ``b[field_b or field]`` seed by seed (see :class:`Paired`)."""
    va, vb = seed_values(a, field), seed_values(b, field_b or field)
    seeds = tuple(sorted(set(va) & set(vb)))
    diffs = tuple(scale * (va[s] - vb[s]) for s in seeds)
    if not diffs:
        verdict = "missing"
    elif len(diffs) < MIN_SEEDS:
        verdict = "few"
    elif all(d <= -tol for d in diffs):
        verdict = "lower"
    elif all(d >= tol for d in diffs):
        verdict = "higher"
    elif all(abs(d) < tol for d in diffs):
        verdict = "equal"
    else:
        verdict = "mixed"
    return Paired(seeds, diffs, verdict)


def undecided(p: Paired) -> str:
    """Why a comparison states no direction, with the numbers."""
    if p.verdict == "few":
        return (f"not distinguishable: {p.n} seed only, fewer than the {MIN_SEEDS} a direction needs "
                f"({p.per_seed()})")
    return f"not distinguishable across seeds ({p.per_seed()})"


# ----------------------------------------------------------------------------------------------
# formatting


def _p(x: float | None) -> str:
    return f"{pct(x)} %"


def _ms(r: Mapping[str, Any], field: str) -> str:
    """'61.6 ± 20.1 %' (mean ± sd over seeds) or '61.6 %' with one seed."""
    sd = r.get(field + "_sd")
    return _p(r.get(field)) if sd is None else f"{pct(r.get(field))} ± {pct(sd)} %"


def _share(x: float) -> str:
    return f"{round(100 * x, 4):g} %"


def _label(r: Mapping[str, Any]) -> str:
    return r.get("defence_label") or r["defence"]


def _n(recs: Sequence[Mapping[str, Any]]) -> int:
    return max((r.get("n_seeds") or 1) for r in recs) if recs else 0


def _seeds_note(recs: Sequence[Mapping[str, Any]]) -> str:
    n = _n(recs)
    return " (1 seed)" if n <= 1 else f" (mean ± sd of {n} seeds)"


def _group(agg: Sequence[Mapping[str, Any]], key: Callable[[Mapping[str, Any]], Hashable],
           keep: Callable[[Mapping[str, Any]], bool] = lambda r: True) -> dict[Any, list[Mapping[str, Any]]]:
    """The records ``keep`` accepts, grouped by ``key`` (groups and records in ``agg`` order)."""
    groups: dict[Any, list[Mapping[str, Any]]] = {}
    for r in agg:
        if keep(r):
            groups.setdefault(key(r), []).append(r)
    return groups


def _defended(r: Mapping[str, Any]) -> bool:
    return r["kind"] in ("filter", "repair", "combination") and not r.get("sweep")


# ----------------------------------------------------------------------------------------------
# the findings


def attack_findings(agg: Sequence[Mapping[str, Any]]) -> list[str]:
    out = []
    clean = {r["setting"]: r for r in agg if r["kind"] == "clean"}
    groups = _group(agg, lambda r: (r["dataset"], r["trigger"]), lambda r: r["kind"] == "attack")
    for (dataset, trigger), recs in groups.items():
        recs = sorted(recs, key=lambda r: r["poison_share"])
        levels = ", ".join(f"{_ms(r, 'attack_success')} at {_share(r['poison_share'])}" for r in recs)
        s = f"Attack on {dataset} with the {trigger} trigger: attack success {levels} poisoned"
        if len(recs) > 1:
            p = paired(recs[-1], recs[0], "attack_success")
            if p.directed:
                s += (f"; it was {'higher' if p.verdict == 'higher' else 'lower'} at "
                      f"{_share(recs[-1]['poison_share'])} than at {_share(recs[0]['poison_share'])} on every seed")
            first = next((r for r in recs if (v := seed_values(r, "attack_success"))
                          and all(x >= ATTACK_SUCCEEDS for x in v.values())), None)
            s += (f"; it reached {_p(ATTACK_SUCCEEDS)} on every seed first at {_share(first['poison_share'])} poisoned"
                  if first else f"; at no share did it reach {_p(ATTACK_SUCCEEDS)} on every seed")
        costs = []
        for r in recs:
            if r["setting"] not in clean:
                continue
            p = paired(r, clean[r["setting"]], "accuracy")
            what = {"lower": f"lower by {-p.mean:.1f} points on every seed",
                    "higher": f"higher by {p.mean:.1f} points on every seed",
                    "equal": f"within {TIE_POINTS:g} point on every seed"}.get(p.verdict, undecided(p))
            costs.append(f"{what} at {_share(r['poison_share'])}")
        if costs:
            s += "; the poisoned model's clean accuracy against the clean model's: " + "; ".join(costs)
        out.append(s + "." + _seeds_note(recs))
    return out


def best_defence_findings(agg: Sequence[Mapping[str, Any]]) -> list[str]:
    out = []
    by_setting = _group(agg, lambda r: r["setting"])
    for setting, recs in by_setting.items():
        before = next((r for r in recs if r["kind"] == "attack"), None)
        defended = [r for r in recs if _defended(r)]
        if before is None or len(defended) < 2:
            continue
        ranked = sorted(defended, key=lambda r: (r["attack_success"], -r["accuracy"]))
        best = ranked[0]
        comps = [(r, paired(best, r, "attack_success")) for r in ranked[1:]]
        cost_txt = (f"clean accuracy {_ms(best, 'accuracy')}, "
                    f"{signed_points(best['accuracy'] - before['accuracy'])} points against the poisoned model")
        head = (f"On {setting}, {_label(best)} left the lowest attack success: {_ms(best, 'attack_success')}, "
                f"from {_ms(before, 'attack_success')} without defence ({cost_txt})")
        unclear = [(r, p) for r, p in comps if p.verdict != "lower"]
        if not unclear:
            out.append(f"{head}; it was below every other defence on all {comps[0][1].n} seeds.")
            continue
        if all(p.verdict == "few" for _, p in comps):
            out.append(f"{head}; with {comps[0][1].n} seed the defences cannot be ranked (a direction needs "
                       f"{MIN_SEEDS} seeds that agree).")
            continue
        below = [r for r, p in comps if p.verdict == "lower"]
        tail = "; not distinguishable across seeds from " + ", ".join(
            f"{_label(r)} ({_ms(r, 'attack_success')}; {p.per_seed()})" for r, p in unclear)
        if below:
            tail += "; below " + ", ".join(_label(r) for r in below) + " on every seed"
        out.append(head + tail + ".")
    return out


def order_findings(agg: Sequence[Mapping[str, Any]]) -> list[str]:
    """For every pair of combinations that are the same steps in reverse order (AC→FP vs FP→AC)."""
    out = []
    combos = [r for r in agg if r["kind"] == "combination"]
    done = set()
    for a in combos:
        rev = ">".join(reversed(a["pipeline"].split(">")))
        for b in combos:
            if b["setting"] != a["setting"] or b["pipeline"] != rev or b is a:
                continue
            pair = (a["setting"], frozenset((a["defence"], b["defence"])))
            if pair in done:
                continue
            done.add(pair)
            p = paired(a, b, "attack_success")
            head = (f"On {a['setting']}, {_label(a)} left an attack success of {_ms(a, 'attack_success')} "
                    f"(clean accuracy {_ms(a, 'accuracy')}) and {_label(b)} {_ms(b, 'attack_success')} "
                    f"(clean accuracy {_ms(b, 'accuracy')}): ")
            if p.verdict == "equal":
                tail = f"both orders lowered attack success about equally (within {TIE_POINTS:g} point on every seed)."
            elif p.directed:
                win, lose = (a, b) if p.verdict == "lower" else (b, a)
                acc = paired(win, lose, "accuracy")
                acc_txt = {"lower": "lower clean accuracy on every seed", "higher": "higher clean accuracy on every "
                           "seed", "equal": f"clean accuracy within {TIE_POINTS:g} point"}.get(
                    acc.verdict, "clean accuracy " + undecided(acc))
                tail = (f"{_label(win)} lowered attack success more on all {p.n} seeds, by {abs(p.mean):.1f} points "
                        f"on average, with {acc_txt} relative to {_label(lose)}.")
            else:
                tail = f"which order is better is {undecided(p)}."
            out.append(head + tail)
    return out


def _ac_part(r: Mapping[str, Any], cands: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The AC run alone with the analysis of combination ``r``'s AC step."""
    acs = [c for c in cands if c["pipeline"] == "ac" and c["kind"] == "filter" and not c.get("sweep")]
    if r.get("ac_analysis"):
        same = [c for c in acs if c.get("ac_analysis") == r["ac_analysis"]]
        if same:
            return same[0]
    role = paper.role_of(r)
    if role in ("ac>fp", "fp>ac"):  # the paper's combinations use the size metric
        same = [c for c in acs if paper.role_of(c) == "ac-size"]
        if same:
            return same[0]
    return next((c for c in acs if c["defence"] == "ac"), acs[0] if acs else None)


def combination_vs_parts_findings(agg: Sequence[Mapping[str, Any]]) -> list[str]:
    """Did a combination beat each of its steps run alone (with the same parameters)?"""
    out = []
    idx = _group(agg, lambda r: r["setting"])
    for r in agg:
        if r["kind"] != "combination":
            continue
        parts = []
        for step in r["pipeline"].split(">"):
            if step == "ac":
                part = _ac_part(r, idx[r["setting"]])
            else:
                cands = [c for c in idx[r["setting"]] if c["pipeline"] == step and c["kind"] in ("filter", "repair")]
                if step == "fp":
                    cands = [c for c in cands if c.get("layer") == r.get("layer")
                             and c.get("fp_threshold") == r.get("fp_threshold")]
                part = next((c for c in cands if c["defence"] == step), cands[0] if cands else None)
            if part is not None:
                parts.append(part)
        if len(parts) < 2:
            continue
        verdicts = []
        for c in parts:
            p = paired(r, c, "attack_success")
            if p.directed:
                verdicts.append(f"{'below' if p.verdict == 'lower' else 'above'} {_label(c)} alone "
                                f"({_ms(c, 'attack_success')}) on all {p.n} seeds")
            elif p.verdict == "equal":
                verdicts.append(f"within {TIE_POINTS:g} point of {_label(c)} alone on every seed")
            else:
                verdicts.append(f"against {_label(c)} alone ({_ms(c, 'attack_success')}) {undecided(p)}")
        out.append(f"On {r['setting']}, {_label(r)} ended at an attack success of {_ms(r, 'attack_success')}: "
                   + "; ".join(verdicts) + ".")
    return out


def ac_findings(agg: Sequence[Mapping[str, Any]]) -> list[str]:
    out = []
    groups = _group(agg, lambda r: (r["dataset"], r["trigger"], _label(r)),
                    lambda r: r["kind"] == "filter" and r["pipeline"] == "ac"
                    and r.get("removed_poisoned_share") is not None)
    for (dataset, trigger, lab), recs in groups.items():
        recs = sorted(recs, key=lambda r: r["poison_share"])
        found = ", ".join(f"{_ms(r, 'removed_poisoned_share')} at {_share(r['poison_share'])}" for r in recs)
        rc = [r["removed_clean_share"] for r in recs if r.get("removed_clean_share") is not None]
        clean_txt = (f"{_p(min(rc))}" if len(rc) == 1 else f"{_p(min(rc))} to {_p(max(rc))}") if rc else "–"
        s = (f"{lab} on {dataset} / {trigger} removed, of the poisoned samples, {found} poisoned, and {clean_txt} "
             f"of the clean samples; attack success after retraining "
             + ", ".join(_ms(r, "attack_success") for r in recs))
        if len(recs) > 1:
            p = paired(recs[-1], recs[0], "removed_poisoned_share")
            if p.directed:
                s += (f"; the share of poisoned samples found was {'higher' if p.verdict == 'higher' else 'lower'} "
                      f"at {_share(recs[-1]['poison_share'])} than at {_share(recs[0]['poison_share'])} on all "
                      f"{p.n} seeds")
            elif p.verdict == "equal":
                s += "; the share of poisoned samples found did not change with the poison share on any seed"
            else:
                s += f"; whether the share found changes with the poison share is {undecided(p)}"
        out.append(s + "." + _seeds_note(recs))
    return out


def filter_summary_findings(agg: Sequence[Mapping[str, Any]]) -> list[str]:
    out = []
    groups = _group(agg, lambda r: r["defence"],
                    lambda r: r["kind"] == "filter" and r.get("removed_poisoned_share") is not None)
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
            p = paired(last, second, "attack_success")
            desc = (f"On {setting}, Fine-Pruning the last conv layer ({_count(last)} channels pruned) left "
                    f"{_ms(last, 'attack_success')} attack success and the second-to-last "
                    f"({_count(second)} pruned) {_ms(second, 'attack_success')}: ")
            if p.verdict == "equal":
                desc += f"both layers did about equally well (within {TIE_POINTS:g} point on every seed)."
            elif p.directed:
                which = "the last" if p.verdict == "lower" else "the second-to-last"
                desc += (f"pruning {which} conv layer lowered attack success more on all {p.n} seeds, by "
                         f"{abs(p.mean):.1f} points on average.")
            else:
                desc += f"which layer works better is {undecided(p)}."
            out.append(desc)
    return out


def _count(r: Mapping[str, Any]) -> str:
    n, c = r.get("neurons_pruned"), r.get("n_channels")
    if n is None:
        return "?"
    return f"{n:.0f}/{c:.0f}" if c is not None else f"{n:.0f}"


def threshold_findings(agg: Sequence[Mapping[str, Any]]) -> list[str]:
    out = []
    groups = _group(agg, lambda r: (r["setting"], r.get("layer") or "?"),
                    lambda r: r["kind"] == "repair" and r.get("fp_threshold") is not None)
    for (setting, layer), recs in groups.items():
        recs = sorted(recs, key=lambda r: r["fp_threshold"])
        if len({r["fp_threshold"] for r in recs}) < 2:
            continue
        lo, hi = recs[0], recs[-1]
        parts = [f"the channels pruned went from {_count(lo)} to {_count(hi)} (mean)"]
        for field, what in (("accuracy", "clean accuracy"), ("attack_success", "attack success")):
            p = paired(hi, lo, field)
            values = f"{_ms(lo, field)} → {_ms(hi, field)}"
            if p.directed:
                parts.append(f"{what} {values}, {p.verdict} on all {p.n} seeds")
            elif p.verdict == "equal":
                parts.append(f"{what} {values}, within {TIE_POINTS:g} point on every seed")
            else:
                parts.append(f"{what} {values}, {undecided(p)}")
        out.append(f"On {setting} ({layer}), raising the Fine-Pruning threshold from {_share(lo['fp_threshold'])} "
                   f"to {_share(hi['fp_threshold'])}: " + "; ".join(parts) + ".")
    return out


def compute_findings(agg: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every finding the aggregated cells support, in report order."""
    out: list[str] = []
    for f in (attack_findings, best_defence_findings, order_findings, combination_vs_parts_findings,
              ac_findings, filter_summary_findings, fp_layer_findings, threshold_findings):
        out.extend(f(agg))
    return out
