"""The paper's claims, checked against a run: agree, disagree, not distinguishable or not run.

Each check restates one claim of Milakovic & Mayer (DBSec 2022; see ``../shared/paper/SPEC.md``),
takes the paper's own numbers for it from the shipped Tables 4–7 (:mod:`.paper`) where the tables
hold them, and evaluates the same statement on the aggregated cells of a run.

How a verdict is reached. A claim is tested per setting; in each setting the comparison is made
seed by seed (:func:`.findings.paired`), and the setting **supports** the claim when every seed
shows the paper's direction (at least :data:`.findings.MIN_SEEDS` seeds), **contradicts** it when
every seed shows the opposite or no difference, and is **undecided** otherwise. The claim then
*agrees* when more than half of the tested settings support it, *disagrees* when more than half
contradict it, is *not distinguishable* otherwise, and *not run* when no setting has the cells it
needs. The paper's claims are themselves majorities ("AC→FP beat AC alone in 9 of 10 settings"),
so a single contrary setting does not overturn an otherwise consistent run — but it is listed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping, Sequence

from . import paper
from .findings import MIN_SEEDS, TIE_POINTS, Paired, paired, seed_values
from .records import mean_sd, pct

AGREE, DISAGREE, UNCLEAR, NOT_RUN = "agree", "disagree", "not distinguishable", "not run"
#: A measured share counts as inside the paper's range when within this many points of it.
RANGE_TOLERANCE_POINTS = 5.0
#: A defence "worked" on a seed when it lowered attack success by at least this many points.
WORKED_POINTS = 25.0
#: "AC finds most of the poisoned images": at least this share of them removed.
MOST_FOUND = 0.5
_FAMILY_NAMES = {"gtsrb": "GTSRB", "ytaf": "YouTube Aligned Faces", "lfw": "LFW"}


@dataclass
class Claim:
    """One claim: what the paper says, its numbers, ours, and the verdict."""

    id: str
    claim: str
    paper: str
    ours: str
    verdict: str
    supported: int = 0
    contradicted: int = 0
    undecided: int = 0
    keys: list[str] = field(default_factory=list)  # cache keys of the cells the verdict rests on

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _verdict(plus: int, minus: int, zero: int) -> str:
    total = plus + minus + zero
    if total == 0:
        return NOT_RUN
    if 2 * plus > total:
        return AGREE
    if 2 * minus > total:
        return DISAGREE
    return UNCLEAR


def _tally_text(plus: int, minus: int, zero: int, what: str = "settings") -> str:
    return (f"supported in {plus}, contradicted in {minus}, undecided in {zero} of {plus + minus + zero} {what}")


def _by_role(agg: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Mapping[str, Any]]]:
    """``{setting: {role: aggregate}}``; the first cell of a role in a setting wins."""
    out: dict[str, dict[str, Mapping[str, Any]]] = {}
    for r in agg:
        role = paper.role_of(r)
        if role is not None:
            out.setdefault(r["setting"], {}).setdefault(role, r)
    return out


def _family(agg: Sequence[Mapping[str, Any]], setting: str) -> str:
    return next(r["dataset"] for r in agg if r["setting"] == setting)


_COUNT_FIELDS = {"removed_poisoned", "removed_clean", "neurons_pruned", "n_channels", "poisoned_present", "n_train"}


def _ms(r: Mapping[str, Any], field: str) -> str:
    """Mean ± sd (n) of a field in its unit: counts as counts, deltas in points, rates in %."""
    m, sd, n = r.get(field), r.get(field + "_sd"), r.get(field + "_n", r.get("n_seeds", 1))
    if field in _COUNT_FIELDS:
        body = "–" if m is None else f"{m:.1f}".removesuffix(".0") + ("" if sd is None else f" ± {sd:.1f}")
    else:
        body = pct(m) + ("" if sd is None else f" ± {pct(sd)}") + (" points" if field.startswith("delta_") else " %")
    return f"{body} (n={n})"


def _direction_outcome(p: Paired, want: str) -> str:
    """'+' when every seed shows ``want`` ('lower'/'higher'), '-' for the opposite or no difference, '0' else."""
    if p.verdict == want:
        return "+"
    if p.verdict in ("lower", "higher", "equal"):
        return "-"
    return "0"


def _sign_word(p: Paired) -> str:
    return {"lower": "lower on every seed", "higher": "higher on every seed",
            "equal": f"within {TIE_POINTS:g} point on every seed", "mixed": "seeds disagree",
            "few": f"fewer than {MIN_SEEDS} seeds", "missing": "no shared seed"}[p.verdict]


def _paired_claim(cid: str, text: str, paper_text: str, agg, pairs: Sequence[tuple[str, Mapping, Mapping]],
                  want: str, field: str = "attack_success") -> Claim:
    """A directional claim ``a <want> b`` over (setting, a, b) triples."""
    plus = minus = zero = 0
    parts, keys = [], []
    for setting, a, b in pairs:
        keys += [k for k in list(a.get("keys") or []) + list(b.get("keys") or []) if k]
        p = paired(a, b, field)
        o = _direction_outcome(p, want)
        plus, minus, zero = plus + (o == "+"), minus + (o == "-"), zero + (o == "0")
        parts.append(f"{setting}: {_ms(a, field)} vs {_ms(b, field)}, {_sign_word(p)} ({p.per_seed()})")
    ours = "; ".join(parts) + (f" — {_tally_text(plus, minus, zero)}" if parts else "")
    return Claim(cid, text, paper_text, ours or "the study has no setting with both cells",
                 _verdict(plus, minus, zero), plus, minus, zero, list(dict.fromkeys(keys)))


def _predicate_claim(cid: str, text: str, paper_text: str, items: Sequence[tuple[str, Mapping, str]],
                     test: Callable[[float], bool]) -> Claim:
    """A claim about one field of each (label, aggregate, field): ``test`` must hold on every seed."""
    plus = minus = zero = 0
    parts, keys = [], []
    for label, rec, field in items:
        keys += [k for k in rec.get("keys") or [] if k]
        vals = seed_values(rec, field)
        held = [test(v) for v in vals.values()]
        if len(held) >= MIN_SEEDS and all(held):
            o = "+"
        elif len(held) >= MIN_SEEDS and not any(held):
            o = "-"
        else:
            o = "0"
        plus, minus, zero = plus + (o == "+"), minus + (o == "-"), zero + (o == "0")
        word = {"+": "holds on every seed", "-": "fails on every seed",
                "0": "seeds disagree" if len(held) >= MIN_SEEDS else f"fewer than {MIN_SEEDS} seeds"}[o]
        parts.append(f"{label}: {_ms(rec, field)}, {word}")
    ours = "; ".join(parts) + (f" — {_tally_text(plus, minus, zero)}" if parts else "")
    return Claim(cid, text, paper_text, ours or "the study has no setting with these cells",
                 _verdict(plus, minus, zero), plus, minus, zero, list(dict.fromkeys(keys)))


def _count_rows(table: str, a: str, b: str, families: set[str] | None = None) -> tuple[int, int, int, int]:
    """(a < b, a == b, a > b, rows) over the paper's rows of ``table``."""
    lo = eq = hi = n = 0
    for r in paper.rows(table):
        if families is not None and r["dataset"] not in families:
            continue
        n += 1
        lo, eq, hi = lo + (r[a] < r[b]), eq + (r[a] == r[b]), hi + (r[a] > r[b])
    return lo, eq, hi, n


# ----------------------------------------------------------------------------------------------
# the claims


def _ac_clean_removal(agg, roles) -> list[Claim]:
    out = []
    families = sorted({_family(agg, s) for s, rr in roles.items() if "ac-size" in rr}
                      & {d for d, _ in paper.paper_rows()})
    for fam in families:
        vals = [r["removed_clean_pct"] for r in paper.rows("table4") if r["dataset"] == fam]
        lo, hi = min(vals), max(vals)
        items = [(s, rr["ac-size"], "removed_clean_share") for s, rr in roles.items()
                 if "ac-size" in rr and _family(agg, s) == fam]
        band = (max(0.0, lo - RANGE_TOLERANCE_POINTS) / 100, (hi + RANGE_TOLERANCE_POINTS) / 100)
        out.append(_predicate_claim(
            f"ac-clean-removal:{fam}",
            f"AC with the size metric removes about a third of the clean training data on {_FAMILY_NAMES[fam]} "
            f"(it flags the smaller cluster of every class)",
            f"Table 4: {lo:.2f}–{hi:.2f} % of the clean images removed ({len(vals)} rows); checked against "
            f"{100 * band[0]:.1f}–{100 * band[1]:.1f} % (± {RANGE_TOLERANCE_POINTS:g} points)",
            items, lambda v, band=band: band[0] <= v <= band[1]))
    return out


def _fp_layer(agg, roles) -> list[Claim]:
    out = []
    families = sorted({_family(agg, s) for s in roles} & {d for d, _ in paper.paper_rows()})
    if not families:
        return [Claim("fp-layer", "Fine-Pruning works better on the last conv layer for GTSRB and on the "
                      "second-to-last for the face data sets", "Table 5",
                      "the study has no data set of the paper (gtsrb, ytaf, lfw)", NOT_RUN)]
    for fam in families:
        last_lower, eq, last_higher, n = _count_rows("table5", "last_asr_pct", "second_last_asr_pct", {fam})
        paper_layer = "last" if last_lower > last_higher else "second-to-last"
        want = "lower" if paper_layer == "last" else "higher"
        pairs = [(s, rr["fp-last"], rr["fp-second-last"]) for s, rr in roles.items()
                 if _family(agg, s) == fam and "fp-last" in rr and "fp-second-last" in rr]
        out.append(_paired_claim(
            f"fp-layer:{fam}",
            f"On {_FAMILY_NAMES[fam]}, Fine-Pruning the {paper_layer} conv layer lowers attack success more "
            f"than pruning the {'second-to-last' if paper_layer == 'last' else 'last'} (below: last vs "
            f"second-to-last)",
            f"Table 5: the last layer left lower attack success in {last_lower}, equal in {eq}, higher in "
            f"{last_higher} of {n} rows", agg, pairs, want))
    return out


def _combination_claims(agg, roles) -> list[Claim]:
    def pairs(a: str, b: str):
        out = []
        for s, rr in roles.items():
            if a in rr:
                bb = paper.resolve_role(b, _family(agg, s)) if b == "fp-paper-layer" else b
                if bb in rr:
                    out.append((s, rr[a], rr[bb]))
        return out

    def fp_alone_pairs(a: str):
        out = []
        for s, rr in roles.items():
            fam = _family(agg, s)
            if a not in rr or paper.fp_layer(fam) is None:
                continue
            role = paper.resolve_role("fp-paper-layer", fam)
            if role in rr:
                out.append((s, rr[a], rr[role]))
        return out

    lo, eq, hi, n = _count_rows("table6", "acfp_asr_pct", "asr_ac_alone_pct")
    c1 = _paired_claim(
        "acfp-beats-ac", "AC→FP leaves a lower attack success than AC alone",
        f"the text: in 9 of 10 settings; Table 6: lower in {lo}, equal in {eq}, higher in {hi} of {n} rows",
        agg, pairs("ac>fp", "ac-size"), "lower")
    lo, eq, hi, n = _count_rows("table6", "acfp_asr_pct", "fpac_asr_pct")
    c2 = _paired_claim(
        "ac-first", "Apply AC first: AC→FP leaves a lower attack success than FP→AC (the paper's recommendation)",
        f"Table 6: AC→FP lower in {lo}, equal in {eq}, higher in {hi} of {n} rows", agg,
        pairs("ac>fp", "fp>ac"), "lower")
    lo, eq, hi, n = _count_rows("table6", "fpac_asr_pct", "asr_fp_alone_pct")
    c3 = _paired_claim(
        "fpac-worse-than-fp", "FP→AC rarely improves on Fine-Pruning alone (on the paper's layer): its attack "
        "success is higher",
        f"the text: FP→AC beat FP alone in 2 of 10 settings; Table 6: FP→AC lower in {lo}, equal in {eq}, "
        f"higher in {hi} of {n} rows", agg, fp_alone_pairs("fp>ac"), "higher")
    return [c1, c2, c3]


def _ac_share_claims(agg, roles) -> list[Claim]:
    out = []
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for s, rr in roles.items():
        if "ac-size" in rr:
            r = rr["ac-size"]
            groups.setdefault((r["dataset"], r["trigger"]), []).append(r)
    pairs = []
    for (fam, trigger), recs in groups.items():
        recs = sorted(recs, key=lambda r: r["poison_share"])
        if len(recs) >= 2 and recs[0]["poison_share"] < recs[-1]["poison_share"]:
            pairs.append((f"{fam} / {trigger} at {100 * recs[-1]['poison_share']:g} % vs "
                          f"{100 * recs[0]['poison_share']:g} %", recs[-1], recs[0]))
    low = {r["setting"]: r for r in paper.rows("table4")
           if r["dataset"] == "gtsrb" and r["setting"] in ("yellow square (2%)", "yellow square (7%)")}
    out.append(_paired_claim(
        "ac-rises-with-share", "AC (size metric) finds a larger share of the poisoned images at higher poison "
        "shares (Fig. 2: none found up to 4 %, then a sharp rise to up to 90 %)",
        f"Table 4, yellow square: {low['yellow square (2%)']['removed_poisoned_pct']:.2f} % found at 2 %, "
        f"{low['yellow square (7%)']['removed_poisoned_pct']:.2f} % at 7 %", agg, pairs, "higher",
        field="removed_poisoned_share"))

    # The paper's own low-share rows: nothing found at 2 % and 4 %, most found at 7 %.
    by_row: dict[str, Mapping[str, Any]] = {}
    for s, rr in roles.items():
        r = rr.get("ac-size")
        if r is not None and r.get("dataset") == "gtsrb" and r.get("paper_row"):
            by_row.setdefault(r["paper_row"], r)
    items_none = [(f"{row} ({by_row[row]['setting']})", by_row[row], "removed_poisoned")
                  for row in ("yellow square (2%)", "big yellow square") if row in by_row]
    items_most = [(f"yellow square (7%) ({by_row['yellow square (7%)']['setting']})", by_row["yellow square (7%)"],
                   "removed_poisoned_share")] if "yellow square (7%)" in by_row else []
    t4 = {r["setting"]: r for r in paper.rows("table4") if r["dataset"] == "gtsrb"}
    none_claim = _predicate_claim(
        "ac-none-at-low-share", "AC (size metric) finds no poisoned image at 2 % and 4 % poisoned (the yellow "
        "square at 2 %, the big yellow square at 4 %)",
        f"Table 4: removed poisoned {t4['yellow square (2%)']['removed_poisoned']:.0f} of "
        f"{t4['yellow square (2%)']['poisoned']:.0f} and {t4['big yellow square']['removed_poisoned']:.0f} of "
        f"{t4['big yellow square']['poisoned']:.0f}", items_none, lambda v: v == 0)
    most_claim = _predicate_claim(
        "ac-most-at-7", f"AC (size metric) finds most (≥ {100 * MOST_FOUND:g} %) of the poisoned images of the "
        "yellow square at 7 %",
        f"Table 4: {t4['yellow square (7%)']['removed_poisoned']:.0f} of {t4['yellow square (7%)']['poisoned']:.0f} "
        f"({t4['yellow square (7%)']['removed_poisoned_pct']:.2f} %)", items_most, lambda v: v >= MOST_FOUND)
    return out + [none_claim, most_claim]


#: A channel is dormant on clean inputs when its clean mean activation is at most this fraction of
#: the layer's largest one (ReLU channels that clean inputs barely touch).
DORMANT_FRACTION = 0.05


def dormant_share(clean: Sequence[float], triggered: Sequence[float]) -> float | None:
    """Share of the trigger's extra activation that falls in channels dormant on clean inputs.

    The extra activation of a channel is ``max(triggered - clean, 0)``; dormant channels have a
    clean mean of at most :data:`DORMANT_FRACTION` of the layer's largest. A fixed, absolute cut
    (not "the least active half") keeps the measure near zero when the trigger merely adds noise:
    ranking channels by their clean value and then measuring the increase over it would favour the
    low-ranked ones by construction. Near 1: the trigger drives channels that clean inputs leave
    quiet (what Fine-Pruning relies on). None when the trigger adds no activation at all.
    """
    c, t = [float(x) for x in clean], [float(x) for x in triggered]
    if len(c) != len(t) or not c:
        raise ValueError(f"clean and triggered must be equally long and non-empty, got {len(c)} and {len(t)}")
    cut = DORMANT_FRACTION * max(c)
    extra = [max(ti - ci, 0.0) for ci, ti in zip(c, t)]
    total = sum(extra)
    if total <= 0.0:
        return None
    return sum(e for ci, e in zip(c, extra) if ci <= cut) / total


def _dormant(agg, roles) -> list[Claim]:
    out = []
    families = sorted({_family(agg, s) for s, rr in roles.items() if (rr.get("none") or {}).get("channel_activity")}
                      & {d for d, _ in paper.paper_rows()})
    if not families:
        return [Claim("dormant-layer", "The trigger wakes channels that clean inputs leave dormant, in the last conv "
                      "layer for GTSRB and in the second-to-last for the faces", "Figs. 7–8 (no numbers)",
                      "no undefended model of a data set of the paper recorded its per-channel activations", NOT_RUN)]
    for fam in families:
        layer = paper.fp_layer(fam)
        other = "second_last_conv" if layer == "last_conv" else "last_conv"
        pairs = []
        for s, rr in roles.items():
            rec = rr.get("none")
            if _family(agg, s) != fam or not rec or not rec.get("channel_activity"):
                continue
            per_layer: dict[str, dict[int, float | None]] = {layer: {}, other: {}}
            for seed, layers in rec["channel_activity"].items():
                if layer in layers and other in layers:
                    for name_ in per_layer:
                        per_layer[name_][int(seed)] = dormant_share(**layers[name_])
            if not per_layer[layer]:
                continue
            # one pseudo-aggregate per layer, so the seed-by-seed comparison is the usual one
            a, b = ({"by_seed": {sd_: {"dormant": v} for sd_, v in per_layer[name_].items()},
                     "keys": rec.get("keys") or []} for name_ in (layer, other))
            for agg_ in (a, b):
                m, sd, n = mean_sd(v["dormant"] for v in agg_["by_seed"].values())
                agg_.update(dormant=m, dormant_sd=sd, dormant_n=n, n_seeds=len(agg_["by_seed"]))
            pairs.append((s, a, b))
        name = {"last_conv": "last", "second_last_conv": "second-to-last"}
        out.append(_paired_claim(
            f"dormant-layer:{fam}",
            f"On {_FAMILY_NAMES[fam]}, the trigger wakes channels that clean inputs leave dormant in the "
            f"{name[layer]} conv layer more than in the {name[other]} (share of the trigger's extra activation in "
            f"channels dormant on clean inputs: {name[layer]} vs {name[other]})",
            f"Figs. 7–8 (no numbers): dormant channels in the {name[layer]} conv layer for "
            f"{_FAMILY_NAMES[fam]}, the layer its Fine-Pruning works best on", agg, pairs, "higher",
            field="dormant"))
    return out


def _fails(agg, roles) -> list[Claim]:
    out = []
    what_paper_tried = {
        "ss": "the text: no setting worked, over a grid of the expected poison share (the true one included) "
              "and the multiplier; no table",
        "dp": "the text: no setting worked — the data sets carry no provenance, and random source groups never "
              "helped; no table",
    }
    # Spectral Signatures may run over the paper's grid (ss@<share>x<multiplier> columns): the
    # claim is that no grid point works, so each setting is judged by its best (lowest) one.
    best_ss: dict[str, Mapping[str, Any]] = {}
    for r in agg:
        if r.get("pipeline") == "ss" and not r.get("sweep") and r.get("attack_success") is not None:
            cur = best_ss.get(r["setting"])
            if cur is None or r["attack_success"] < cur["attack_success"]:
                best_ss[r["setting"]] = r
    for role, name in (("ss", "Spectral Signatures"), ("dp", "Data Provenance")):
        if role == "ss":
            items = [(s, r, "delta_attack_success") for s, r in best_ss.items()]
        else:
            items = [(s, rr[role], "delta_attack_success") for s, rr in roles.items() if role in rr]
        out.append(_predicate_claim(
            f"{role}-fails", f"{name} does not work: it does not lower attack success (by {WORKED_POINTS:g} "
            "points or more) in any setting", what_paper_tried[role], items,
            lambda v: v > -WORKED_POINTS / 100))
    return out


def check_claims(agg: Sequence[Mapping[str, Any]]) -> list[Claim]:
    """Every claim of the paper, checked on the aggregated cells (see the module docstring)."""
    roles = _by_role(agg)
    out: list[Claim] = []
    for f in (_ac_clean_removal, _ac_share_claims, _fp_layer, _dormant, _combination_claims, _fails):
        out.extend(f(agg, roles))
    if not any(c.id.startswith("ac-clean-removal") for c in out):
        vals = [r["removed_clean_pct"] for r in paper.rows("table4")]
        out.insert(0, Claim("ac-clean-removal", "AC with the size metric removes about a third of the clean "
                            "training data (it flags the smaller cluster of every class)",
                            f"Table 4: {min(vals):.2f}–{max(vals):.2f} % of the clean images removed "
                            f"({len(vals)} rows)",
                            "the study has no AC (size metric) cell on a data set of the paper", NOT_RUN))
    return out
