"""The poisoning recipe: which training rows get the trigger, and how they are relabelled.

A :class:`Recipe` names the source class(es), the target class, the trigger, the poison share
and — explicitly, because the paper uses both — what the share is *of*:

* ``share_of="source_class"``: ``round(share * n_source)`` of the source-class training images
  are poisoned (the paper's GTSRB settings, e.g. "7 % of the stop signs");
* ``share_of="training_set"``: ``round(share * n_train)`` images are poisoned, drawn from the
  source class(es) ("10 % of the training set"); it is an error if the source classes hold fewer
  images than that;
* ``share_of="target_class"``: the share of the *target* class's training rows that carry the
  trigger after poisoning, ``k / (k + n_target)``, so ``k = round(share * n_target / (1 - share))``.
  This is the reading that fits the paper's GTSRB counts (52 poisoned beside the ~702 clean stop
  signs = 6.9 %, its "7 %"; see ``datasets_gen.presets``).

A recipe may instead give the exact ``count`` of poisoned rows (the paper's tables give counts:
52, 14, 44, 258, 258, 29 on GTSRB); ``share`` then stays as the paper's nominal label and the
share actually reached is recorded beside it (:func:`achieved_share`).

``source_classes="random"`` draws ONE source class (never the target) with a generator seeded by
the variant's seed, as the paper does for its face settings; the class drawn is recorded in the
variant.

Poisoned rows are chosen without replacement by a seeded generator, get the trigger and the label
``target_class``; every other row keeps its label. ``test_triggered`` is a triggered copy of every
source-class test image, labelled with the target, for the attack success rate.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

from datasets_gen.triggers import Trigger, parse_trigger

SHARE_OF = ("source_class", "training_set", "target_class")
#: ``source_classes`` values that are not a list of class ids.
SOURCE_KEYWORDS = ("all", "random")


@dataclass
class Recipe:
    """How to poison a data set.

    Attributes
    ----------
    source_classes : list of int, "all" or "random"
        Classes whose images get the trigger: one class in the paper's settings (a fixed one on
        GTSRB, a seeded ``"random"`` one on faces), or ``"all"`` (every class but the target,
        "all-to-one").
    target_class : int
        Label given to poisoned images.
    trigger : str
        Trigger spec (see :mod:`datasets_gen.triggers`).
    share : float
        Poison share in (0, 1].
    share_of : str
        ``"source_class"``, ``"training_set"`` or ``"target_class"`` (see the module docstring).
    count : int or None
        Exact number of poisoned rows (overrides the count that ``share`` implies).
    name : str
        Preset name or a free label, recorded in the variant.
    notes : str
        Where the setting comes from (paper table/figure), for the dataset card.
    """

    source_classes: list[int] | str
    target_class: int
    trigger: str
    share: float
    share_of: str = "source_class"
    count: int | None = None
    name: str = "custom"
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.target_class, bool) or not isinstance(self.target_class, (int, np.integer)):
            raise TypeError(f"target_class must be an integer, got {self.target_class!r}")
        self.target_class = int(self.target_class)
        if isinstance(self.source_classes, str):
            if self.source_classes not in SOURCE_KEYWORDS:
                raise ValueError(f"source_classes must be a list of class ids, 'all' or 'random', "
                                 f"got {self.source_classes!r}")
        else:
            if isinstance(self.source_classes, (int, np.integer)):
                self.source_classes = [int(self.source_classes)]
            try:
                self.source_classes = [int(c) for c in self.source_classes]
            except (TypeError, ValueError):
                raise TypeError(f"source_classes must be class ids or 'all', got {self.source_classes!r}") from None
            if not self.source_classes:
                raise ValueError("recipe needs at least one source class")
            if len(set(self.source_classes)) != len(self.source_classes):
                raise ValueError(f"duplicate source classes {self.source_classes}")
            if self.target_class in self.source_classes:
                raise ValueError(f"target class {self.target_class} is also a source class")
        validate_share(self.share)
        self.share = float(self.share)
        if self.share_of not in SHARE_OF:
            raise ValueError(f"share_of must be one of {SHARE_OF}, got {self.share_of!r}")
        if self.share_of == "target_class" and self.share >= 1.0:
            raise ValueError(f"a share of the target class must be below 1, got {self.share}")
        if self.count is not None:
            if isinstance(self.count, bool) or not isinstance(self.count, (int, np.integer)) or self.count < 1:
                raise ValueError(f"count must be a positive integer number of poisoned rows, got {self.count!r}")
            self.count = int(self.count)
        parse_trigger(self.trigger)  # fail early on a bad spec

    def check_classes(self, n_classes: int) -> None:
        """Raise ``ValueError`` naming any class id outside ``[0, n_classes)``."""
        sources = [] if isinstance(self.source_classes, str) else list(self.source_classes)
        bad = [c for c in [*sources, self.target_class] if not 0 <= c < n_classes]
        if bad:
            raise ValueError(f"unknown class id(s) {bad}: the data set has classes 0..{n_classes - 1}")

    def resolved_sources(self, n_classes: int) -> list[int]:
        """Source classes as ids (``"all"`` = every class but the target).

        A ``"random"`` source must be drawn first (:meth:`draw_source`): it depends on the seed.
        """
        self.check_classes(n_classes)
        if self.source_classes == "random":
            raise ValueError("source_classes='random' is drawn per seed: call Recipe.draw_source(labels, seed) first")
        if self.source_classes == "all":
            return [c for c in range(n_classes) if c != self.target_class]
        return list(self.source_classes)

    def draw_source(self, labels: np.ndarray, seed: int, n_classes: int) -> "Recipe":
        """This recipe with a ``"random"`` source replaced by one seeded class (others: unchanged).

        The class is drawn uniformly among the classes other than the target that hold enough
        training rows for the poison count; the draw is recorded in ``extra["source_drawn"]``.
        """
        if self.source_classes != "random":
            return self
        self.check_classes(n_classes)
        labels = np.asarray(labels)
        counts = np.bincount(labels, minlength=n_classes) if labels.size else np.zeros(n_classes, np.int64)
        n_target = int(counts[self.target_class])
        candidates = []
        for c in range(n_classes):
            if c == self.target_class or counts[c] == 0:
                continue
            try:
                poison_count(self.share, self.share_of, int(counts[c]), int(labels.size), n_target, self.count)
            except ValueError:
                continue
            candidates.append(c)
        if not candidates:
            raise ValueError(f"no class other than the target {self.target_class} holds enough training rows "
                             f"for this recipe (share {self.share} of the {self.share_of.replace('_', ' ')}, "
                             f"count {self.count})")
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x50C1A55]))
        chosen = int(rng.choice(candidates))
        extra = dict(self.extra, source_drawn={"rule": "uniform over eligible classes, seeded by the variant seed",
                                               "seed": int(seed), "n_eligible": len(candidates), "class": chosen})
        return Recipe(**{**asdict(self), "source_classes": [chosen], "extra": extra})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Recipe":
        fields = ("source_classes", "target_class", "trigger", "share", "share_of", "count", "name", "notes", "extra")
        missing = [k for k in ("source_classes", "target_class", "trigger", "share") if k not in d]
        if missing:
            raise KeyError(f"recipe missing key(s) {missing}")
        unknown = [k for k in d if k not in fields]
        if unknown:
            raise KeyError(f"unknown recipe key(s) {unknown}; allowed: {list(fields)}")
        return cls(**{k: d[k] for k in fields if k in d})

    def build_trigger(self) -> Trigger:
        return parse_trigger(self.trigger)


def validate_share(share: Any) -> None:
    """Raise ``ValueError`` unless ``share`` is a finite number in (0, 1]."""
    if isinstance(share, bool) or not isinstance(share, (int, float, np.integer, np.floating)):
        raise TypeError(f"poison share must be a number, got {share!r}")
    if not math.isfinite(float(share)) or not 0.0 < float(share) <= 1.0:
        raise ValueError(f"poison share must be in (0, 1], got {share}")


def poison_count(share: float, share_of: str, n_source: int, n_train: int, n_target: int | None = None,
                 count: int | None = None) -> int:
    """Number of rows to poison (round half up, at least 1).

    Parameters
    ----------
    share : float
        In (0, 1] (below 1 for ``"target_class"``).
    share_of : str
        ``"source_class"`` (base ``n_source``), ``"training_set"`` (base ``n_train``) or
        ``"target_class"`` (``k / (k + n_target) = share``).
    n_source, n_train : int
        Source-class training images and all training images.
    n_target : int, optional
        Training images of the target class (needed for ``"target_class"``).
    count : int, optional
        The exact count (a paper's table): returned as is once it is checked against ``n_source``.

    Raises
    ------
    ValueError
        More rows asked for than the source classes hold, or no source images.
    """
    validate_share(share)
    if share_of not in SHARE_OF:
        raise ValueError(f"share_of must be one of {SHARE_OF}, got {share_of!r}")
    if n_source <= 0:
        raise ValueError("the source class(es) have no training images to poison")
    if count is not None:
        if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
            raise ValueError(f"count must be a positive integer, got {count!r}")
        if count > n_source:
            raise ValueError(f"count {count} asks for more poisoned images than the source class(es) hold ({n_source})")
        return int(count)
    if share_of == "target_class":
        if n_target is None or n_target < 0:
            raise ValueError(f"a share of the target class needs its training-image count, got {n_target!r}")
        if share >= 1.0:
            raise ValueError(f"a share of the target class must be below 1, got {share}")
        base = n_target
        k = max(1, int(math.floor(share * n_target / (1.0 - share) + 0.5)))
    else:
        base = n_source if share_of == "source_class" else n_train
        k = max(1, int(math.floor(share * base + 0.5)))
    if k > n_source:
        raise ValueError(f"share {share} of the {share_of.replace('_', ' ')} ({base} images) asks for {k} "
                         f"poisoned images but the source class(es) hold only {n_source}")
    return k


def achieved_share(n_poisoned: int, share_of: str, n_source: int, n_train: int, n_target: int) -> float:
    """The share that ``n_poisoned`` rows actually are, measured the way ``share_of`` defines it."""
    if share_of == "target_class":
        return n_poisoned / (n_poisoned + n_target) if n_poisoned + n_target else 0.0
    base = n_source if share_of == "source_class" else n_train
    return n_poisoned / base if base else 0.0


def select_poisoned(labels: np.ndarray, recipe: Recipe, seed: int, n_classes: int | None = None) -> np.ndarray:
    """Choose the training rows to poison.

    Parameters
    ----------
    labels : ndarray of shape (n_train,), int
        True classes of the training rows.
    recipe : Recipe
        With concrete source classes (a ``"random"`` source drawn by :meth:`Recipe.draw_source`).
    seed : int
    n_classes : int, optional
        Classes of the data set (default: ``max(labels) + 1``); resolves ``"all"`` sources.

    Returns
    -------
    ndarray of shape (n_train,), bool
        Exactly :func:`poison_count` rows set, all of a source class.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    if n_classes is None:
        n_classes = max(int(labels.max()) + 1 if labels.size else 0, recipe.target_class + 1)
    sources = recipe.resolved_sources(int(n_classes))
    source_rows = np.flatnonzero(np.isin(labels, sources))
    n_target = int(np.count_nonzero(labels == recipe.target_class))
    k = poison_count(recipe.share, recipe.share_of, source_rows.size, labels.size, n_target, recipe.count)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x9015]))
    chosen = rng.choice(source_rows, size=k, replace=False)
    mask = np.zeros(labels.size, bool)
    mask[chosen] = True
    return mask


def relabel(labels: np.ndarray, poisoned: np.ndarray, target_class: int) -> np.ndarray:
    """Labels with the poisoned rows set to ``target_class`` (a new array)."""
    out = np.array(labels, dtype=np.int64, copy=True)
    out[np.asarray(poisoned, bool)] = int(target_class)
    return out


def source_mask(labels: np.ndarray, source_classes: Sequence[int]) -> np.ndarray:
    """Rows whose true class is a source class (the rows ``test_triggered`` copies)."""
    return np.isin(np.asarray(labels), list(source_classes))
