"""Study presets: which tasks, alignment functions, seeds and sample sizes a study runs.

``quick`` is for tests (about a minute), ``demo`` is the README's main job (<= 10 minutes on a
2-core machine, using shipped checkpoints when present), ``full`` is for a real comparison.

>>> cfg = study_config("quick", tasks=["matching"])
>>> cfg.tasks, cfg.alignments
(('matching',), ('dot', 'general', 'additive'))
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Sequence

from .. import align as _align
from ..errors import ShapeError, UnknownNameError

__all__ = ["StudyConfig", "PRESETS", "study_config", "DEFAULT_TASKS"]

DEFAULT_TASKS = ("matching", "vqa", "generation")
ALL_ALIGNMENTS = ("dot", "scaled_dot", "cosine", "general", "biased_general", "activated_general", "additive")


@dataclass(frozen=True)
class StudyConfig:
    """What one study runs.

    Attributes:
        preset: the preset name (also passed to ``Task.default_config`` and ``attnlens.tasks.training.run``).
        tasks: task names (``attnlens.tasks.available_tasks()``).
        alignments: alignment function names (``attnlens.align.available()``).
        seeds: training seeds; each (task, alignment, seed) is one resumable unit.
        n_examples: test examples analysed per unit (the same examples for every alignment).
        split: data split analysed.
        removal: removal mode of the faithfulness curves (``mask``, ``zero``, ``mean``).
        n_boot: bootstrap resamples for the confidence intervals.
        alpha: significance level after Holm correction.
        gallery: examples shown in each of the best and the worst gallery.
        agreement: compute attention vs leave-one-out attribution agreement (R + 1 scored rows per example).
        gradient_agreement: captum attribution methods compared with the attention, per example,
            over the region features (``Task.region_forward``): names among
            :data:`attnlens.metrics.functional.agreement.METHODS`; rows ``ig_*`` (integrated
            gradients, zero baseline), ``ixg_*`` (input x gradient), ``ablation_*`` (feature
            ablation); empty to switch off.
        steps: steps of the deletion/insertion curves.
        n_subsets: random subsets of the faithfulness correlation.
        task_overrides: per task, config entries that replace the task's preset defaults.
        explainers: explanation methods of :mod:`attnlens.explain` scored like the attention, on
            the same examples and the same output (:mod:`attnlens.study.explainers`); their rows are
            labelled ``<alignment>+<method>`` in the tables. ``raw`` is the task's own attention
            (already scored). Needs ``shard_size=None`` (asking for both is an error; a preset's
            explainers are switched off in a sharded study).
        shard_size: when set, a unit computes its examples and metric rows in shards of this many
            examples, each saved as it finishes, so an interrupted unit resumes from its finished
            shards (:mod:`attnlens.study.dataset`); the results are the same bit for bit.
    """

    preset: str = "demo"
    tasks: tuple[str, ...] = DEFAULT_TASKS
    alignments: tuple[str, ...] = ALL_ALIGNMENTS
    seeds: tuple[int, ...] = (0,)
    n_examples: int = 48
    split: str = "test"
    removal: str = "mask"
    n_boot: int = 10_000
    alpha: float = 0.05
    gallery: int = 3
    agreement: bool = True
    gradient_agreement: tuple[str, ...] = ("integrated_gradients", "input_x_gradient")
    steps: int = 20
    n_subsets: int = 50
    task_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    shard_size: int | None = None
    explainers: tuple[str, ...] = ()

    def to_json(self) -> dict:
        return asdict(self)


PRESETS: dict[str, StudyConfig] = {
    "quick": StudyConfig(preset="quick", alignments=("dot", "general", "additive"), n_examples=12, n_boot=1000,
                         gallery=2, steps=5, n_subsets=10),
    "demo": StudyConfig(preset="demo", n_examples=24, n_boot=10_000, gallery=3, steps=10, n_subsets=20,
                        explainers=("raw", "rollout", "gradient_weighted")),
    "full": StudyConfig(preset="full", n_examples=500, n_boot=10_000, gallery=4, seeds=(0, 1, 2)),
}


def study_config(preset: str = "demo", *, tasks: Sequence[str] | None = None,
                 alignments: Sequence[str] | None = None, seeds: Sequence[int] | int | None = None,
                 **overrides) -> StudyConfig:
    """The preset's config with the given fields replaced (names are validated).

    ``seeds`` may be an int N (seeds ``0..N-1``) or a sequence of seeds.
    """
    if preset not in PRESETS:
        raise UnknownNameError("study preset", preset, PRESETS)
    cfg = PRESETS[preset]
    changes: dict[str, Any] = dict(overrides)
    if tasks is not None:
        changes["tasks"] = tuple(dict.fromkeys(str(t) for t in tasks))
    if alignments is not None:
        valid = _align.available()
        for a in alignments:
            if a not in valid:
                raise UnknownNameError("alignment function", a, valid)
        changes["alignments"] = tuple(dict.fromkeys(str(a) for a in alignments))
    if seeds is not None:
        changes["seeds"] = tuple(range(int(seeds))) if isinstance(seeds, int) else tuple(int(s) for s in seeds)
    cfg = replace(cfg, **changes)
    if not cfg.tasks or not cfg.alignments or not cfg.seeds:
        raise ShapeError(f"a study needs at least one task, alignment and seed; got tasks={cfg.tasks}, "
                         f"alignments={cfg.alignments}, seeds={cfg.seeds}")
    if cfg.shard_size is not None and int(cfg.shard_size) < 1:
        raise ShapeError(f"shard_size must be >= 1 (or None for one pass), got {cfg.shard_size}")
    from ..metrics.functional.agreement import METHODS

    methods = (cfg.gradient_agreement,) if isinstance(cfg.gradient_agreement, str) else cfg.gradient_agreement
    for m in methods:
        if m not in METHODS:
            raise UnknownNameError("attribution method (gradient_agreement)", m, METHODS)
    cfg = replace(cfg, gradient_agreement=tuple(dict.fromkeys(str(m) for m in methods)))
    if isinstance(cfg.explainers, str):
        cfg = replace(cfg, explainers=tuple(e for e in cfg.explainers.split(",") if e))
    if cfg.explainers:
        from ..explain import available as explainers_available

        for m in cfg.explainers:
            if m not in explainers_available():
                raise UnknownNameError("explanation method (explainers)", m, explainers_available())
        if cfg.shard_size is not None and "explainers" not in overrides:
            cfg = replace(cfg, explainers=())  # the preset's explainers are off in a sharded study
        elif cfg.shard_size is not None:
            raise ShapeError(f"explainers {cfg.explainers} are scored in one pass per unit; they need shard_size=None "
                             f"(got {cfg.shard_size})")
        cfg = replace(cfg, explainers=tuple(dict.fromkeys(str(m) for m in cfg.explainers)))
    if cfg.n_examples < 2:
        raise ShapeError(f"n_examples must be >= 2 for paired statistics, got {cfg.n_examples}")
    return cfg
