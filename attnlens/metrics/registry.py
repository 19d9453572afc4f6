"""The metric registry: one entry per metric, read by everything that scores, ranks or reports.

An entry (:class:`MetricEntry`) holds a metric's ``name``, ``category`` (``grounding``,
``faithfulness``, ``agreement``, ``task``), direction (``higher_is_better``), input kind,
typed options with defaults (:class:`Option`) and the function. :class:`~attnlens.metrics.MetricSuite`
computes the registered metrics, the study's per-example rows
(:mod:`attnlens.study.example_metrics`) take their metric set, category and direction from
here, and the study's analysis (:mod:`attnlens.study.analysis`: direction, ranking,
significance) reads the direction from here. Adding a metric is one :func:`register_metric`
call (the built-in ones are in :mod:`attnlens.metrics.builtin`).

Input kinds (:data:`INPUT_KINDS`) say what ``fn`` is called with; ``[N]`` per-example values come
back, NaN where undefined, with integer reason codes (:data:`attnlens.metrics.functional._common.REASONS`)
where the kind says so:

* ``pixel_map``: ``fn(maps [N, H, W] float64, masks [N, H, W] bool, gt_boxes (N arrays [G, 4]),
  **options) -> (values [N], codes [N])``. ``maps`` is the region attention painted at the image
  size by :func:`attnlens.geometry.regions_to_pixels` in the entry's ``pixels`` mode (``"max"``
  or ``"density"``); ``masks`` is the union of the target's boxes. Also scored on the baseline maps.
* ``region_weights``: ``fn(weights [N, R] float64, boxes [N, R, 4], gt_boxes, valid [N, R] bool,
  **options) -> (values, codes)``: the attention row over the regions themselves (no baselines).
* ``region_order``: ``fn(inp: FaithfulnessInput, **options) -> values [N]``: the scorer and the
  region importance (:class:`FaithfulnessInput`; ``inp.shared(key, compute)`` shares work, such
  as one ERASER pass, between the metrics of a call).
* ``curves``: ``fn(curves {(mode, order): Curve}, **options) -> values [N]`` over the
  deletion/insertion curves of :func:`attnlens.metrics.functional.faithfulness.perturbation_curves`;
  the entry's ``curves`` lists the ``(mode, order)`` pairs it reads.
* ``attribution``: ``fn(importance [R'] float64, attribution [R'] float64, **options) -> float``
  over the valid regions of one example; the entry's ``source`` names the attribution
  (``leave_one_out`` or a captum method of :data:`attnlens.metrics.functional.agreement.METHODS`).
* ``task``: a number the task reports (``Task.evaluate``); ``fn`` is ``None``, the entry carries
  the direction and category only.

>>> e = get_metric("pointing_game")
>>> e.category, e.higher_is_better, e.inputs, e.defaults()
('grounding', True, 'pixel_map', {'tolerance': 15.0})
>>> [m.name for m in metrics(category="faithfulness")][:3]
['comprehensiveness_aopc', 'sufficiency_aopc', 'faithfulness_correlation']
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from ..errors import DTypeError, ParameterError, RegistryError, UnknownNameError
from ..params import int_param, real_param

__all__ = ["MetricEntry", "Option", "FaithfulnessInput", "register_metric", "unregister_metric", "get_metric",
           "metrics", "metric_names", "direction", "INPUT_KINDS", "CATEGORIES", "PIXEL_MODES"]

#: Input kinds and what ``fn`` receives (module docstring).
INPUT_KINDS = ("pixel_map", "region_weights", "region_order", "curves", "attribution", "task")
#: Categories a metric can belong to (``baseline`` is a row label of the study, not a category).
CATEGORIES = ("grounding", "faithfulness", "agreement", "task")
PIXEL_MODES = ("max", "density")
_TYPES = ("int", "real", "choice", "reals")

_REGISTRY: dict[str, "MetricEntry"] = {}


@dataclass(frozen=True)
class Option:
    """A typed metric option with its default.

    ``type``: ``"int"`` / ``"real"`` (within ``[lo, hi]``), ``"choice"`` (one of ``choices``)
    or ``"reals"`` (a non-empty sequence of reals within ``[lo, hi]``).

    >>> Option("k", 1000, "int", lo=1).check(5, "topk_intersection")
    5
    """

    name: str
    default: Any
    type: str = "real"
    lo: float | None = None
    hi: float | None = None
    choices: tuple = ()
    doc: str = ""

    def __post_init__(self):
        if self.type not in _TYPES:
            raise UnknownNameError("option type", self.type, _TYPES)
        object.__setattr__(self, "default", self.check(self.default, f"option {self.name!r}"))

    def check(self, value, fn: str):
        """``value`` converted to the option's type, or a typed error naming ``fn`` and the option."""
        if self.type == "int":
            return int_param(value, self.name, fn, lo=self.lo, hi=self.hi)
        if self.type == "real":
            return real_param(value, self.name, fn, lo=self.lo, hi=self.hi)
        if self.type == "choice":
            if value not in self.choices:
                raise UnknownNameError(f"{fn}: {self.name}", str(value), self.choices)
            return value
        if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
            raise DTypeError(f"{fn}: {self.name} must be a sequence of numbers, got {value!r}")
        vals = tuple(real_param(v, f"{self.name}[{i}]", fn, lo=self.lo, hi=self.hi) for i, v in enumerate(value))
        if not vals:
            raise ParameterError(f"{fn}: {self.name} must not be empty")
        return vals


@dataclass(frozen=True)
class MetricEntry:
    """One registered metric (see the module docstring for ``inputs``)."""

    name: str
    category: str
    higher_is_better: bool
    inputs: str
    fn: Callable | None
    options: tuple[Option, ...] = ()
    pixels: str | None = None  # pixel_map: "max" | "density"
    curves: tuple[tuple[str, str], ...] = ()  # curves: the (mode, order) pairs read
    source: str | None = None  # attribution: "leave_one_out" or a captum method
    description: str = ""

    def defaults(self) -> dict[str, Any]:
        """``{option: default}``."""
        return {o.name: o.default for o in self.options}

    def resolve(self, given: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The entry's options: the defaults, overridden by the checked values of ``given`` that it
        declares (other keys are ignored: one settings mapping serves many metrics)."""
        given = given or {}
        return {o.name: (o.check(given[o.name], self.name) if o.name in given else o.default) for o in self.options}

    def __repr__(self) -> str:
        arrow = "higher" if self.higher_is_better else "lower"
        return f"MetricEntry({self.name!r}, {self.category}, {arrow} is better, inputs={self.inputs})"


@dataclass
class FaithfulnessInput:
    """What a ``region_order`` metric reads: ``score(keep [M, R], index [M]) -> [M]`` over these
    ``N`` examples, their ``importance [N, R]`` (0 at padded regions), ``valid [N, R]``, the seed
    of the call and whether to show progress bars. ``shared(key, compute)`` runs ``compute()``
    once per key within the call."""

    score: Callable
    importance: Any
    valid: Any
    seed: int = 0
    progress: bool = False
    _cache: dict = field(default_factory=dict, repr=False)

    def shared(self, key, compute: Callable):
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]


def _check_entry(e: MetricEntry) -> None:
    if not isinstance(e.name, str) or not e.name or e.name.startswith("baseline:"):
        raise RegistryError(f"register_metric: name must be a non-empty string not starting with 'baseline:', "
                            f"got {e.name!r}")
    if e.category not in CATEGORIES:
        raise UnknownNameError(f"register_metric({e.name!r}): category", str(e.category), CATEGORIES)
    if e.inputs not in INPUT_KINDS:
        raise UnknownNameError(f"register_metric({e.name!r}): inputs", str(e.inputs), INPUT_KINDS)
    if not isinstance(e.higher_is_better, bool):
        raise DTypeError(f"register_metric({e.name!r}): higher_is_better must be True or False, got "
                         f"{e.higher_is_better!r}")
    if e.fn is not None and not callable(e.fn):
        raise DTypeError(f"register_metric({e.name!r}): fn must be callable, got {type(e.fn).__name__}")
    bad = [o for o in e.options if not isinstance(o, Option)]
    if bad:
        raise DTypeError(f"register_metric({e.name!r}): options must be Option(...) entries, got {bad[0]!r}")
    if (e.fn is None) != (e.inputs == "task"):
        raise RegistryError(f"register_metric({e.name!r}): inputs={e.inputs!r} "
                            + ("takes no fn (the task reports the value)" if e.inputs == "task" else "needs fn"))
    if e.inputs == "pixel_map" and e.pixels not in PIXEL_MODES:
        raise UnknownNameError(f"register_metric({e.name!r}): pixels", str(e.pixels), PIXEL_MODES)
    if e.inputs == "curves":
        from .functional.faithfulness import MODES, ORDERS

        if not e.curves:
            raise RegistryError(f"register_metric({e.name!r}): inputs='curves' needs curves=((mode, order), ...)")
        for mode, order in e.curves:
            if mode not in MODES or order not in ORDERS:
                raise UnknownNameError(f"register_metric({e.name!r}): curve", f"{mode}/{order}",
                                       [f"{m}/{o}" for m in MODES for o in ORDERS])
    if e.inputs == "attribution":
        from .functional.agreement import METHODS

        if e.source not in ("leave_one_out", *METHODS):
            raise UnknownNameError(f"register_metric({e.name!r}): source", str(e.source), ("leave_one_out", *METHODS))
    names = [o.name for o in e.options]
    if len(set(names)) != len(names):
        raise RegistryError(f"register_metric({e.name!r}): option names repeat: {names}")


def register_metric(name: str, *, category: str, higher_is_better: bool, inputs: str, fn: Callable | None = None,
                    options: tuple[Option, ...] = (), pixels: str | None = None,
                    curves: tuple[tuple[str, str], ...] = (), source: str | None = None, description: str = "",
                    overwrite: bool = False) -> MetricEntry:
    """Register a metric; a name registered already raises :class:`~attnlens.errors.RegistryError`
    unless ``overwrite=True``. Returns the entry. Registration order is the order of the suite's
    defaults and of the study's rows.

    >>> import torch
    >>> peak = lambda maps, masks, gt: (maps.flatten(1).amax(1), torch.zeros(len(maps), dtype=torch.long))
    >>> e = register_metric("peak_mass", category="grounding", higher_is_better=True, inputs="pixel_map",
    ...                     pixels="density", fn=peak)
    >>> register_metric("peak_mass", category="grounding", higher_is_better=True, inputs="task")
    Traceback (most recent call last):
    ...
    attnlens.errors.RegistryError: metric 'peak_mass' is already registered; pass overwrite=True to replace it
    >>> unregister_metric("peak_mass").name
    'peak_mass'
    """
    if isinstance(options, (Option, str)) or isinstance(curves, str):
        raise DTypeError(f"register_metric({name!r}): options and curves must be sequences, got {options!r}, "
                         f"{curves!r}")
    entry = MetricEntry(name, category, higher_is_better, inputs, fn, tuple(options), pixels,
                        tuple(tuple(c) for c in curves), source, str(description))
    _check_entry(entry)
    if name in _REGISTRY and not overwrite:
        raise RegistryError(f"metric {name!r} is already registered; pass overwrite=True to replace it")
    _REGISTRY[name] = entry
    return entry


def unregister_metric(name: str) -> MetricEntry:
    """Remove a registered metric and return its entry (an unknown name raises UnknownNameError)."""
    if name not in _REGISTRY:
        raise UnknownNameError("metric", name, _REGISTRY)
    return _REGISTRY.pop(name)


def get_metric(name: str) -> MetricEntry:
    """The entry of ``name`` (UnknownNameError with close matches otherwise)."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise UnknownNameError("metric", str(name), _REGISTRY) from None


def metrics(*, category: str | None = None, inputs: str | tuple[str, ...] | None = None,
            source: str | None = None) -> list[MetricEntry]:
    """Registered entries in registration order, optionally filtered."""
    kinds = (inputs,) if isinstance(inputs, str) else inputs
    return [e for e in _REGISTRY.values() if (category is None or e.category == category)
            and (kinds is None or e.inputs in kinds) and (source is None or e.source == source)]


def metric_names(**filters) -> tuple[str, ...]:
    """Names of :func:`metrics` (same filters)."""
    return tuple(e.name for e in metrics(**filters))


def direction(name: str) -> bool | None:
    """``higher_is_better`` of a registered metric, ``None`` for an unregistered name.

    >>> direction("sufficiency_aopc"), direction("no_such_metric")
    (False, None)
    """
    e = _REGISTRY.get(name)
    return None if e is None else e.higher_is_better
