"""The study: the paper's grid of settings × poison shares × defences, cached, run and reported.

``run_study(config, out, quick=False, progress=True)`` is the library function behind
``backdoorlab reproduce``: it builds the poisoned variants (``datasets_gen``), trains the clean and
poisoned models, runs every defence and combination on them, caches each finished cell by a hash
of its configuration and writes the report (tables shaped like the paper's Tables 4–6, figures
like its Figs. 1–3, trigger previews and findings computed from the numbers).

Modules: ``config`` (loading and validation), ``presets`` (the full and quick grids), ``cache``
(cell cache, atomic writes), ``records`` (the cell record and its aggregation), ``runner`` (the
grid), ``report`` / ``plots`` / ``findings`` (the outputs), ``paper`` (the paper's Tables 4–7,
shipped in ``paper_data/``) and ``claims`` (the paper's claims checked on a run).
"""

from __future__ import annotations

from .config import StudyConfig, load_config, study_from_dict

__all__ = ["StudyConfig", "load_config", "study_from_dict", "run_study", "write_report"]


def __getattr__(name: str):
    # runner pulls in torch and the defences; import it only when asked for.
    if name == "run_study":
        from .runner import run_study

        return run_study
    if name == "write_report":
        from .report import write_report

        return write_report
    raise AttributeError(f"module 'backdoorlab.experiments' has no attribute {name!r}")
