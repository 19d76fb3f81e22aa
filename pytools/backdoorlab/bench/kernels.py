"""Benchmark of the native defence core against the NumPy/scikit-learn reference, same run, same data.

Builds seeded synthetic activations shaped like the paper's two settings —

* ``ytaf``:  1,283 classes x 412 rows x 160 features (DeepID penultimate layer, YouTube Faces);
* ``gtsrb``: 43 classes x 820 rows x 512 features (GTSRB CNN, last conv pooled);

— as ReLU features of class-specific latent factors, with one planted poison cluster: a
fraction of the target class's rows are another class's features plus a trigger direction
(the BadNets picture: source images relabelled to the target, carrying the trigger). It then
runs, with the native core and with the reference:

* the Activation-Clustering core (Chen et al. 2018, IBM ART defaults): FastICA to 10 dims
  (``max_iter=1000, tol=0.005``), 2-means per class, the smaller cluster flagged when it holds
  less than 35 % of its class (ART's ``size`` analysis);
* Spectral-Signature scores (Tran et al. 2018), the top ``1.5 * eps`` of every class flagged
  (``eps`` = planted poisoning rate of the target class);

and prints, per shape and step, the wall time of each side, their ratio, the ratio of process
CPU seconds on the same class subset (robust to other load on a shared machine, where wall times
of multi-threaded libraries suffer most), and the poison-detection F1 of each side. The scikit-learn AC reference on the full YTAF shape takes many minutes, so
``--ref-classes`` times the reference on a class subset (the poisoned class always included)
and extrapolates linearly to all classes (every class has the same size); the output then says
so on every extrapolated line and also prints the ratio measured on the subset alone. F1 is
computed on the same subset rows for both sides.

Usage: ``python -m backdoorlab.bench kernels [--shapes ytaf gtsrb] [--ref-classes 64] [--json out.json]``
or ``backdoorlab bench kernels ...``. Run it under ``nice``: it keeps both cores busy.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from backdoorlab import native, reference
from datasets_gen.atomic import atomic_write_json, json_safe

SHAPES: dict[str, tuple[int, int, int]] = {
    "ytaf": (1283, 412, 160),
    "gtsrb": (43, 820, 512),
}
AC_COMPONENTS, AC_MAX_ITER, AC_TOL = 10, 1000, 0.005
AC_SIZE_THRESHOLD = 0.35  # ART ClusteringAnalyzer "size" analysis default
SS_FACTOR = 1.5           # Tran et al.: remove 1.5 x eps of every class
GOAL_AC_YTAF = 50.0       # issue 2: AC on the YTAF shape >= 50x the reference
F1_SEEDS = 5              # seeds for the poisoned-class F1 comparison


@dataclass
class Synthetic:
    """Grouped synthetic activations: ``X[offsets[c]:offsets[c+1]]`` is class ``c``."""

    X: np.ndarray          # (n, d) float32
    offsets: np.ndarray    # (n_classes + 1,) int64
    poisoned: np.ndarray   # (n,) bool
    target: int
    rate: float            # poisoned fraction of the target class


def synthetic_activations(n_classes: int, per_class: int, dim: int, *, rate: float = 0.15, latent: int = 32,
                          seed: int = 0) -> Synthetic:
    """ReLU activations of class-specific latent factors with one poisoned cluster in class 0.

    Row of class ``c``: ``relu((mu_c + z) @ A + b)``, ``z ~ N(0, I_latent)``, shared mixing
    ``A`` (latent x dim) and bias ``b`` (so about half the features are zero: sparse,
    non-Gaussian, like penultimate-layer activations). Poisoned rows of the target class 0:
    ``relu((mu_s + z + delta) @ A + b)`` with ``mu_s`` the latent mean of another class (the
    true source of the image) and ``delta`` a fixed trigger direction.
    """
    if n_classes < 2 or per_class < 4 or dim < 2:
        raise ValueError(f"need >= 2 classes, >= 4 rows per class and >= 2 features, got {n_classes}, {per_class}, {dim}")
    if not 0.0 < rate < 0.5:
        raise ValueError(f"rate must be in (0, 0.5), got {rate}")
    rng = np.random.default_rng(seed)
    A = (rng.standard_normal((latent, dim)) / np.sqrt(latent)).astype(np.float32)
    b = (rng.standard_normal(dim) * 0.5 - 0.3).astype(np.float32)
    mu = (rng.standard_normal((n_classes, latent)) * 1.2).astype(np.float32)
    delta = rng.standard_normal(latent).astype(np.float32)
    delta *= 2.5 / np.linalg.norm(delta)
    X = np.empty((n_classes * per_class, dim), dtype=np.float32)
    poisoned = np.zeros(n_classes * per_class, dtype=bool)
    n_poison = int(round(rate * per_class))
    for c in range(n_classes):
        z = rng.standard_normal((per_class, latent)).astype(np.float32) + mu[c]
        if c == 0:
            sources = rng.integers(1, n_classes, n_poison)
            z[:n_poison] += mu[sources] - mu[0] + delta
            poisoned[:n_poison] = True
        np.maximum(z @ A + b, 0.0, out=X[c * per_class:(c + 1) * per_class])
    offsets = np.arange(n_classes + 1, dtype=np.int64) * per_class
    return Synthetic(X, offsets, poisoned, 0, n_poison / per_class)


def f1(flags: np.ndarray, truth: np.ndarray) -> float:
    """F1 of the flagged rows against the planted poison (0 when nothing is flagged or poisoned)."""
    tp = int(np.sum(flags & truth))
    if tp == 0:
        return 0.0
    precision, recall = tp / int(flags.sum()), tp / int(truth.sum())
    return 2 * precision * recall / (precision + recall)


def ac_flags(labels: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Flag, per class, the smaller of the 2 clusters when it holds < 35 % of the class."""
    flags = np.zeros(labels.size, dtype=bool)
    for c in range(offsets.size - 1):
        lab = labels[offsets[c]:offsets[c + 1]]
        if lab.size == 0:
            continue
        sizes = np.bincount(lab, minlength=2)
        small = int(np.argmin(sizes))
        if sizes[small] / lab.size < AC_SIZE_THRESHOLD:
            flags[offsets[c]:offsets[c + 1]] = lab == small
    return flags


def ss_flags(scores: np.ndarray, offsets: np.ndarray, eps: float) -> np.ndarray:
    """Flag, per class, the ``ceil(1.5 * eps * m)`` rows with the highest scores."""
    flags = np.zeros(scores.size, dtype=bool)
    for c in range(offsets.size - 1):
        s = scores[offsets[c]:offsets[c + 1]]
        n_flag = min(s.size, int(np.ceil(SS_FACTOR * eps * s.size)))
        if n_flag:
            top = np.argsort(-s, kind="stable")[:n_flag]
            flags[offsets[c] + top] = True
    return flags


def subset(data: Synthetic, classes: np.ndarray) -> Synthetic:
    """The rows of ``classes`` (in that order) as a new grouped batch."""
    parts = [np.arange(data.offsets[c], data.offsets[c + 1]) for c in classes]
    rows = np.concatenate(parts)
    sizes = np.array([p.size for p in parts])
    offsets = np.zeros(classes.size + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    return Synthetic(np.ascontiguousarray(data.X[rows]), offsets, data.poisoned[rows], 0, data.rate)


class _Clock:
    """Wall and process-CPU seconds of the calls timed with it (CPU: all threads of the process)."""

    def __init__(self) -> None:
        self.wall = 0.0
        self.cpu = 0.0

    def __call__(self, fn, *args, **kw):
        w0, c0 = time.perf_counter(), time.process_time()
        out = fn(*args, **kw)
        self.wall += time.perf_counter() - w0
        self.cpu += time.process_time() - c0
        return out


def _timed(fn, *args, **kw):
    t0 = time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - t0


def _run(lib, data: Synthetic, n_init: int, seed: int) -> dict:
    """AC core and spectral scores with ``lib`` (native or reference), timed step by step."""
    ica, km, ss = _Clock(), _Clock(), _Clock()
    sources, n_iter = ica(lib.fastica, data.X, data.offsets, AC_COMPONENTS, AC_MAX_ITER, AC_TOL, seed,
                          return_n_iter=True)
    result = km(lib.kmeans, sources, data.offsets, 2, n_init, 300, 1e-4, seed)
    scores = ss(lib.spectral_scores, data.X, data.offsets, True)
    return {"t_ac": ica.wall + km.wall, "cpu_ac": ica.cpu + km.cpu, "t_ica": ica.wall, "t_kmeans": km.wall,
            "t_ss": ss.wall, "cpu_ss": ss.cpu, "labels": result.labels, "scores": scores, "n_iter": n_iter}


def run_native(data: Synthetic, n_init: int, seed: int) -> dict:
    return _run(native, data, n_init, seed)


def run_reference(data: Synthetic, n_init: int, seed: int, threads: int | None = None) -> dict:
    if threads is None:
        return _run(reference, data, n_init, seed)
    # import the estimators first: threadpoolctl limits only the thread pools already loaded
    import sklearn.cluster  # noqa: F401
    import sklearn.decomposition  # noqa: F401
    from threadpoolctl import threadpool_limits  # installed with scikit-learn

    with threadpool_limits(limits=threads):
        return _run(reference, data, n_init, seed)


def bench_shape(name: str, *, ref_classes: int | None, n_init: int, seed: int, rate: float, log,
                ref_threads: int | None = None) -> dict:
    n_classes, per_class, dim = SHAPES[name]
    log(f"\n== {name}: {n_classes} classes x {per_class} rows x {dim} features, "
        f"poison rate {rate:.0%} in class 0 ==")
    data, t_gen = _timed(synthetic_activations, n_classes, per_class, dim, rate=rate, seed=seed)
    log(f"synthetic data: {data.X.nbytes / 2**20:.0f} MiB float32, built in {t_gen:.1f} s")

    rng = np.random.default_rng(seed + 1)
    if ref_classes is None or ref_classes >= n_classes:
        classes = np.arange(n_classes)
    else:
        if ref_classes < 2:
            raise ValueError(f"--ref-classes must be >= 2, got {ref_classes}")
        others = rng.choice(np.arange(1, n_classes), ref_classes - 1, replace=False)
        classes = np.concatenate([[data.target], np.sort(others)])
    sub = subset(data, classes)
    scale = n_classes / classes.size
    extrapolated = classes.size < n_classes

    nat = run_native(data, n_init, seed)
    log(f"native, all {n_classes} classes: AC {nat['t_ac']:.2f} s (FastICA {nat['t_ica']:.2f} s, "
        f"k-means {nat['t_kmeans']:.2f} s), spectral {nat['t_ss']:.2f} s; FastICA iterations mean "
        f"{nat['n_iter'].mean():.0f}, {np.mean(nat['n_iter'] >= AC_MAX_ITER):.0%} of classes at max_iter")
    nat_sub = run_native(sub, n_init, seed) if extrapolated else nat
    log(f"reference (scikit-learn FastICA/KMeans, NumPy SVD) on {classes.size} classes"
        + (f" of {n_classes} (poisoned class + {classes.size - 1} drawn at random) ..." if extrapolated else " ..."))
    ref = run_reference(sub, n_init, seed, ref_threads)
    log(f"reference, {classes.size} classes: AC {ref['t_ac']:.2f} s (FastICA {ref['t_ica']:.2f} s, "
        f"k-means {ref['t_kmeans']:.2f} s), spectral {ref['t_ss']:.2f} s; FastICA iterations mean "
        f"{ref['n_iter'].mean():.0f}, {np.mean(ref['n_iter'] >= AC_MAX_ITER):.0%} at max_iter")

    # F1 on the same rows for both sides: the subset (the native core's full-run labels restricted to it)
    rows = np.concatenate([np.arange(data.offsets[c], data.offsets[c + 1]) for c in classes])
    f1_ac_nat = f1(ac_flags(nat["labels"], data.offsets)[rows], sub.poisoned)
    f1_ac_ref = f1(ac_flags(ref["labels"], sub.offsets), sub.poisoned)
    f1_ss_nat = f1(ss_flags(nat["scores"], data.offsets, data.rate)[rows], sub.poisoned)
    f1_ss_ref = f1(ss_flags(ref["scores"], sub.offsets, data.rate), sub.poisoned)
    f1_ac_nat_all = f1(ac_flags(nat["labels"], data.offsets), data.poisoned)
    f1_ss_nat_all = f1(ss_flags(nat["scores"], data.offsets, data.rate), data.poisoned)
    f1_ac_target = (f1(ac_flags(nat["labels"], data.offsets)[:per_class], data.poisoned[:per_class]),
                    f1(ac_flags(ref["labels"], sub.offsets)[:per_class], sub.poisoned[:per_class]))

    res: dict = {"shape": name, "n_classes": n_classes, "per_class": per_class, "dim": dim, "rate": data.rate,
                 "ref_classes": int(classes.size), "extrapolated": extrapolated, "steps": {}}
    tag = f" (reference extrapolated x{scale:.2f} from {classes.size} classes)" if extrapolated else ""
    log(f"{'step':<10} {'native s':>9} {'reference s':>12} {'ratio':>8} {'subset ratio':>13} "
        f"{'CPU-time ratio':>15} {'F1 native':>10} {'F1 ref':>8}")
    for step, key, ckey, f_nat, f_ref in (("AC", "t_ac", "cpu_ac", f1_ac_nat, f1_ac_ref),
                                          ("spectral", "t_ss", "cpu_ss", f1_ss_nat, f1_ss_ref)):
        t_ref_all = ref[key] * scale
        ratio = t_ref_all / nat[key]
        sub_ratio = ref[key] / nat_sub[key]
        # process CPU seconds (all threads) on the same subset: robust to other load on the machine
        cpu_ratio = ref[ckey] / nat_sub[ckey]
        res["steps"][step] = {"native_s": nat[key], "reference_s": t_ref_all, "reference_measured_s": ref[key],
                              "native_subset_s": nat_sub[key], "ratio": ratio, "subset_ratio": sub_ratio,
                              "native_subset_cpu_s": nat_sub[ckey], "reference_cpu_s": ref[ckey],
                              "cpu_ratio": cpu_ratio, "f1_native": f_nat, "f1_reference": f_ref}
        log(f"{step:<10} {nat[key]:>9.2f} {t_ref_all:>12.2f} {ratio:>7.1f}x {sub_ratio:>12.1f}x {cpu_ratio:>14.1f}x "
            f"{f_nat:>10.3f} {f_ref:>8.3f}{tag}")
    log(f"F1 of the native core over all {n_classes} classes: AC {f1_ac_nat_all:.3f}, spectral {f1_ss_nat_all:.3f}; "
        f"AC F1 inside the poisoned class: native {f1_ac_target[0]:.3f}, reference {f1_ac_target[1]:.3f}")
    # One seed decides a lot for either side (which non-Gaussian directions FastICA keeps), so the
    # AC F1 inside the poisoned class is also compared over several seeds, same seeds both sides.
    target = subset(data, np.array([data.target]))
    seeds = list(range(seed, seed + F1_SEEDS))
    f1_seeds = {"native": [], "reference": []}
    for s_ in seeds:
        for side, fn in (("native", run_native), ("reference", lambda *a: run_reference(*a, ref_threads))):
            out = fn(target, n_init, s_)
            f1_seeds[side].append(f1(ac_flags(out["labels"], target.offsets), target.poisoned))
    log(f"AC F1 inside the poisoned class over seeds {seeds[0]}..{seeds[-1]}: native mean "
        f"{np.mean(f1_seeds['native']):.3f} ({', '.join(f'{v:.2f}' for v in f1_seeds['native'])}), reference mean "
        f"{np.mean(f1_seeds['reference']):.3f} ({', '.join(f'{v:.2f}' for v in f1_seeds['reference'])})")
    res.update(f1_ac_target_seeds=f1_seeds)
    res.update(f1_ac_native_all=f1_ac_nat_all, f1_ss_native_all=f1_ss_nat_all,
               f1_ac_target_native=f1_ac_target[0], f1_ac_target_reference=f1_ac_target[1],
               native_ica_iter_mean=float(nat["n_iter"].mean()), reference_ica_iter_mean=float(ref["n_iter"].mean()))
    return res


def _load() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="backdoorlab bench kernels", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=["ytaf", "gtsrb"],
                   help="activation shapes to run (default: both)")
    p.add_argument("--ref-classes", type=int, default=64,
                   help="time the reference on this many classes (poisoned class included) and extrapolate to all; "
                        "0 = all classes (default: 64; GTSRB's 43 then run in full)")
    p.add_argument("--n-init", type=int, default=10, help="k-means restarts, both sides (default: 10)")
    p.add_argument("--rate", type=float, default=0.15, help="poisoned fraction of the target class (default: 0.15)")
    p.add_argument("--threads", type=int, default=None, help="native OpenMP threads (default: all)")
    p.add_argument("--ref-threads", type=int, default=None,
                   help="limit the reference's BLAS/OpenMP threads (threadpoolctl; default: the libraries' own)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    return p


def run(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.threads is not None:
        native.set_num_threads(args.threads)
    info = native.build_info()
    print(f"backdoorlab {info.get('version')} native core: OpenMP {info.get('openmp')}, "
          f"{native.get_num_threads()} threads, SIMD {info.get('simd_selected')}; "
          f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}; "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; reference threads "
          f"{args.ref_threads or 'library default'}; load average {_load()}", flush=True)
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    results = [bench_shape(s, ref_classes=args.ref_classes or None, n_init=args.n_init, seed=args.seed,
                           rate=args.rate, log=log, ref_threads=args.ref_threads) for s in args.shapes]
    log(f"load average at the end: {_load()} (other processes share these {os.cpu_count()} CPUs)")
    for r in results:
        if r["shape"] == "ytaf":
            ac = r["steps"]["AC"]
            f1_nat_mean = float(np.mean(r["f1_ac_target_seeds"]["native"]))
            f1_ref_mean = float(np.mean(r["f1_ac_target_seeds"]["reference"]))
            ok = ac["ratio"] >= GOAL_AC_YTAF and f1_nat_mean >= f1_ref_mean
            log(f"\ngoal (AC on YTAF >= {GOAL_AC_YTAF:.0f}x the reference, F1 no worse): "
                f"{'met' if ok else 'NOT met'} — {ac['ratio']:.1f}x wall"
                + (" (reference extrapolated)" if r["extrapolated"] else "")
                + f", {ac['cpu_ratio']:.1f}x CPU time on the subset; F1 {ac['f1_native']:.3f} vs "
                f"{ac['f1_reference']:.3f} (seed {args.seed}), poisoned-class mean over {F1_SEEDS} seeds "
                f"{f1_nat_mean:.3f} vs {f1_ref_mean:.3f}")
    if args.json is not None:
        payload = {"build_info": {k: v for k, v in info.items() if k != "cuda_info"}, "args": {
            k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "results": results}
        atomic_write_json(args.json, json_safe(payload))
        log(f"wrote {args.json}")
    return 0
