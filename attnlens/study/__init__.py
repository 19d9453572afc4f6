"""The end-to-end study: which alignment function gives the most interpretable attention?

For every task x alignment function (x seed) the study loads a shipped checkpoint or trains one,
evaluates the task, scores grounding, faithfulness and attention-vs-attribution agreement on the
same test examples, compares alignment functions with paired statistics, flags functions that are
equivalent by construction, draws figures and writes ``report.html``, ``report.md`` and
``metrics.csv``. ``attnlens study`` on the command line runs :func:`run_study`.
"""
from .analysis import combine_units, equivalences, summarize, unit_metrics
from .config import PRESETS, StudyConfig, study_config
from .runner import StudyResult, analyse_study, provenance, run_study
from .units import Unit, find_checkpoint, load_examples, run_unit, unit_done

__all__ = ["PRESETS", "StudyConfig", "StudyResult", "Unit", "analyse_study", "combine_units", "equivalences",
           "find_checkpoint", "load_examples", "provenance", "run_study", "run_unit", "study_config", "summarize",
           "unit_done", "unit_metrics"]
