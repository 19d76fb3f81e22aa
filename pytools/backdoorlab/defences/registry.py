"""The defence registry: spec tokens (``"ac"``, ``"fp-second"``) to configured defence objects.

Its own module so that :mod:`.pipeline`, which builds defences from tokens, imports it directly
instead of reaching back into the package ``__init__`` (which imports the pipeline).
"""

from __future__ import annotations

from .activation_clustering import ActivationClustering
from .base import Defence
from .fine_pruning import FinePruning
from .neural_cleanse import NeuralCleanse
from .provenance import DataProvenance
from .spectral_signatures import SpectralSignatures
from .strip import Strip

__all__ = ["DEFENCES", "ALIASES", "canonical_name", "make_defence"]

#: registry name -> defence class
DEFENCES: dict[str, type[Defence]] = {
    "ac": ActivationClustering,
    "ss": SpectralSignatures,
    "dp": DataProvenance,
    "fp": FinePruning,
    "nc": NeuralCleanse,
    "strip": Strip,
}

#: alias -> (registry name, preset parameters)
ALIASES: dict[str, tuple[str, dict]] = {
    "fp-last": ("fp", {"layer": "last_conv"}),
    "fp-second": ("fp", {"layer": "second_last_conv"}),
    "ac-paper": ("ac", {"analysis": "smaller"}),
    "ac-exclusionary": ("ac", {"analysis": "smaller", "exclusionary": True}),
    "ss-art": ("ss", {"scoring": "art-compatible", "expected_poison_share": 0.33}),
    "nc-prune": ("nc", {"repair": "prune"}),
}


def canonical_name(token: str) -> str:
    """Registry name of a spec token (``"fp-second"`` -> ``"fp"``)."""
    if token in DEFENCES:
        return token
    if token in ALIASES:
        return ALIASES[token][0]
    known = sorted(DEFENCES) + sorted(ALIASES)
    raise ValueError(f"unknown defence {token!r}; known: {', '.join(known)}")


def make_defence(token: str, configs: dict | None = None) -> Defence:
    """Build the defence for a spec token.

    Parameters are merged from the least to the most specific: ``configs[name]`` (every step of
    that defence), then the alias's presets (``fp-second`` always prunes the second-last conv),
    then ``configs[token]`` (that alias only).
    """
    name = canonical_name(token)
    configs = configs or {}
    params = dict(configs.get(name, {}))
    if token in ALIASES:
        params.update(ALIASES[token][1])
        params.update(configs.get(token, {}))
    try:
        return DEFENCES[name](**params)
    except TypeError as exc:
        if "unexpected keyword" in str(exc):
            raise ValueError(f"defence {token!r}: {exc}") from exc
        raise
