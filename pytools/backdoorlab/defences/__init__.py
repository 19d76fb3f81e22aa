"""Defences against data-poisoning backdoors, alone and in sequence.

Data filtering (find poisoned training samples, remove them, retrain):
:class:`ActivationClustering` (``"ac"``), :class:`SpectralSignatures` (``"ss"``),
:class:`DataProvenance` (``"dp"``), :class:`Strip` (``"strip"``). Model repair: :class:`FinePruning`
(``"fp"``), :class:`NeuralCleanse` (``"nc"``, trigger reverse-engineering, then unlearning or pruning).
:class:`Pipeline` chains them from a spec such as ``"ac>fp"``; :func:`defend` is the CLI's entry.

``DEFENCES`` maps registry names to classes; ``ALIASES`` maps convenience tokens to a name plus
preset parameters (``fp-last``/``fp-second`` choose the pruned layer, ``ac-paper`` the ART-style
``smaller`` analysis the paper ran, ``ss-art`` ART 1.20's scoring and defaults).
"""

from __future__ import annotations

from .activation_clustering import ActivationClustering
from .base import Defence, DefenceContext, DefenceResult, FilteringDefence, removal_report
from .fine_pruning import FinePruning
from .neural_cleanse import NeuralCleanse
from .pipeline import Pipeline, PipelineReport, defend
from .provenance import DataProvenance
from .registry import ALIASES, DEFENCES, canonical_name, make_defence
from .spectral_signatures import SpectralSignatures
from .strip import Strip

__all__ = [
    "ActivationClustering", "SpectralSignatures", "DataProvenance", "FinePruning", "NeuralCleanse", "Strip",
    "Defence", "DefenceContext", "DefenceResult", "FilteringDefence", "removal_report",
    "DEFENCES", "ALIASES", "canonical_name", "make_defence", "Pipeline", "PipelineReport", "defend",
]
