"""Training configurations: flat dataclasses serialised to JSON.

Each task has a config dataclass (subclass of :class:`TrainConfig`) and presets
(``quick``: seconds, for tests; ``demo``: about a minute per model on 2 CPU cores, what the
study uses; ``full``: the best numbers this machine can reach in minutes). Overrides are plain
dicts; an unknown key raises :class:`~attnlens.errors.UnknownNameError` listing the valid keys.
Every value is checked on construction: a value of the wrong type (``"10"`` epochs, a list for a
number) raises :class:`~attnlens.errors.DTypeError`, a non-finite or out-of-range one (``epochs <=
0``, a NaN learning rate) :class:`~attnlens.errors.ParameterError`, both naming the key.

>>> cfg = MatchingConfig.preset("quick").replace(epochs=1)
>>> MatchingConfig.from_dict(cfg.to_dict()) == cfg
True
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping

from ..errors import DTypeError, FormatError, ParameterError, ShapeError, UnknownNameError

PRESETS = ("quick", "demo", "full")


def check_preset(preset: str) -> str:
    """Return ``preset`` if it is a known preset name, else raise ``UnknownNameError``."""
    if preset not in PRESETS:
        raise UnknownNameError("preset", preset, PRESETS)
    return preset


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class TrainConfig:
    """Base of the per-task configs: common optimisation fields and (de)serialisation.

    Attributes:
        task: the task name (fixed by the subclass).
        epochs: passes over the training split.
        batch_size: training batch size.
        lr: Adam learning rate.
        lr_decay_epoch: multiply the learning rate by ``lr_decay`` from this epoch on (0: never).
        lr_decay: the decay factor.
        grad_clip: max gradient norm (0: no clipping).
        n_train / n_test: number of scenes in the training / test split (None: the split's default).
        scene_options: keyword options passed to the scene generator.
        threads: torch CPU threads while training and evaluating (0: leave torch's setting). On
            a shared machine one thread is far faster than oversubscribed ones; the thread count
            can change the last bits of CPU reductions, so it is part of the config.
    """

    task: ClassVar[str] = "base"
    PRESETS: ClassVar[dict[str, dict]] = {}

    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-2
    lr_decay_epoch: int = 0
    lr_decay: float = 0.1
    grad_clip: float = 2.0
    n_train: int | None = None
    n_test: int | None = None
    scene_options: dict = field(default_factory=dict)
    threads: int = 1

    #: lower bounds of numeric fields (inclusive unless listed in _OPEN); subclasses may extend
    _MIN: ClassVar[dict[str, float]] = {"epochs": 1, "batch_size": 1, "lr": 0, "lr_decay_epoch": 0, "lr_decay": 0,
                                        "grad_clip": 0, "n_train": 1, "n_test": 1, "threads": 0}
    _OPEN: ClassVar[tuple[str, ...]] = ("lr", "lr_decay")

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            _check_field(type(self).task, f, value, self._MIN.get(f.name), f.name in self._OPEN)
            if isinstance(value, float) and isinstance(f.default, int) and not isinstance(f.default, bool):
                object.__setattr__(self, f.name, int(value))   # 3.0 epochs (e.g. from JSON) is 3

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict:
        """Plain JSON-ready dict (tuples become lists), with ``task`` added."""
        d = {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}
        return {"task": self.task, **d}

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainConfig":
        """Build from a dict (as written by :meth:`to_dict`); unknown keys raise."""
        if not isinstance(d, Mapping):
            raise DTypeError(f"{cls.task} config must be a mapping of keys to values, got {type(d).__name__}")
        d = dict(d)
        task = d.pop("task", cls.task)
        if task != cls.task:
            raise ShapeError(f"config is for task {task!r}, not {cls.task!r}")
        names = cls.field_names()
        for k in d:
            if k not in names:
                raise UnknownNameError(f"{cls.task} config key", k, names)
        kwargs = {}
        for f in dataclasses.fields(cls):
            if f.name in d:
                v = d[f.name]
                default = f.default if f.default is not dataclasses.MISSING else None
                if isinstance(default, tuple) and isinstance(v, list):
                    v = tuple(v)
                kwargs[f.name] = v
        return cls(**kwargs)

    def replace(self, **overrides) -> "TrainConfig":
        """A copy with ``overrides`` applied (unknown keys raise)."""
        return type(self).from_dict({**self.to_dict(), **overrides})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, *, path: object = None) -> "TrainConfig":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise FormatError(f"invalid JSON config: {exc.msg}", path=path, line=exc.lineno) from None
        if not isinstance(data, dict):
            raise FormatError(f"a config must be a JSON object, got {type(data).__name__}", path=path)
        try:
            return cls.from_dict(data)
        except (DTypeError, ParameterError, UnknownNameError, ShapeError) as exc:
            raise FormatError(str(exc), path=path) from None

    @classmethod
    def load(cls, path: str | Path) -> "TrainConfig":
        from ..data._files import require_path

        path = require_path(path, f"{cls.task} config")
        try:
            text = path.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as exc:
            raise FormatError(f"not UTF-8 text: {exc.reason} at byte {exc.start}", path=path) from None
        return cls.from_json(text, path=path)

    @classmethod
    def preset(cls, name: str = "demo") -> "TrainConfig":
        """The preset ``name`` (``quick``, ``demo``, ``full``)."""
        check_preset(name)
        return cls.from_dict(cls.PRESETS.get(name, {}))

    @classmethod
    def resolve(cls, preset: str = "demo", overrides: Mapping[str, Any] | None = None) -> "TrainConfig":
        """Preset, then ``overrides`` on top (an override dict may carry ``task``)."""
        cfg = cls.preset(preset)
        return cfg.replace(**dict(overrides or {})) if overrides else cfg


def _check_field(task: str, f: dataclasses.Field, value: Any, lo: float | None, open_lo: bool) -> None:
    """Type and range of one config value, judged from the field's default (and annotation)."""
    import math
    import numbers

    where = f"{task} config key {f.name!r}"
    default = f.default if f.default is not dataclasses.MISSING else (
        f.default_factory() if f.default_factory is not dataclasses.MISSING else None)  # type: ignore[misc]
    optional = default is None or "None" in str(f.type)
    if value is None:
        if not optional:
            raise DTypeError(f"{where} must not be null")
        return
    kind = type(default) if default is not None else None
    ann = str(f.type)
    if kind is None:   # an Optional field: take the annotation's type
        kind = int if ann.startswith("int") else float if ann.startswith("float") else dict if ann.startswith(
            "dict") else str if ann.startswith("str") else None
    if kind is bool:
        if not isinstance(value, bool):
            raise DTypeError(f"{where} must be true or false, got {type(value).__name__} {value!r}")
        return
    if kind in (int, float):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise DTypeError(f"{where} must be a number, got {type(value).__name__} {value!r}")
        if not math.isfinite(float(value)):
            raise ParameterError(f"{where} must be a finite number, got {value!r}")
        if kind is int and float(value) != int(value):
            raise ParameterError(f"{where} must be a whole number, got {value!r}")
        if lo is not None and (value <= lo if open_lo else value < lo):
            raise ParameterError(f"{where} must be {'>' if open_lo else '>='} {lo:g}, got {value!r}")
        return
    if kind is str and not isinstance(value, str):
        raise DTypeError(f"{where} must be a string, got {type(value).__name__} {value!r}")
    if kind is dict and not isinstance(value, dict):
        raise DTypeError(f"{where} must be an object (dict), got {type(value).__name__} {value!r}")
    if kind in (tuple, list) and not isinstance(value, (tuple, list)):
        raise DTypeError(f"{where} must be a list, got {type(value).__name__} {value!r}")


#: per-alignment options of the matching demo/full presets (see MatchingConfig)
MATCHING_ALIGNMENT = {"additive": {"hidden": 16}}


@dataclass(frozen=True)
class MatchingConfig(TrainConfig):
    """Image-text matching (SCAN / SCAN+RCAR) on the built-in scenes.

    Attributes:
        embed_dim: joint embedding size ``D``.
        word_dim: word-embedding size of the GRU text encoder.
        channels / strides / pool / sampling_ratio / pixels: region encoder (see ``RegionEncoder``).
        direction: ``"t2i"`` or ``"i2t"``.
        agg: pooling of the per-fragment relevances (``mean``, ``lse``, ``max``, ``sum``).
        lambda_softmax / lambda_lse: SCAN temperatures (None: SCAN's defaults per direction).
        norm: score normalisation (``clipped_l2norm`` ...).
        rcar: None (plain SCAN) or ``{"mode": "coop_rcar" | "only_rcr" | "only_rar", "steps": K, ...}``.
        margin / max_violation / warmup_epochs: VSE++ loss; hardest negatives from epoch
            ``warmup_epochs`` on (sum of all violations before). Hardest negatives need captions
            that identify their image: when a caption such as "a red circle" fits several images
            of a batch, the hardest "negative" is often a true match. The scenes before
            ``single_rate`` / ``triple_rate`` existed had 25 % one-object captions; there
            training at ``lr=1e-2`` collapsed (loss stuck at ``2 * margin * batch``) and
            ``additive`` collapsed even at ``lr=3e-3`` (text-to-image R@1 9.1 %). On the current
            default scenes (captions name 2-3 objects, sizes and a relation) all seven functions
            train with the demo preset (``lr=3e-3``, 3 warm-up epochs).
        n_train: the ``demo`` preset trains on 3000 scenes (more than the train split's default
            2000: the generator makes as many as asked); more scenes helped more than more epochs.
        captions_per_image: captions per scene used in training and evaluation (5 = SCAN protocol).
        eval_every: evaluate on the test split every this many epochs (and always after the last).
        alignment_options: per alignment name, extra options of that alignment function, used
            only when training it, e.g. ``{"additive": {"hidden": 16}}``. The ``demo`` and ``full``
            presets give ``additive`` a hidden size of 16: its all-pairs scores materialise
            ``[Ni, Nc, Lq, Lk, hidden]``, and at the default ``hidden = embed_dim`` (128) a demo
            run took about 7.5 minutes instead of about one.
    """

    task: ClassVar[str] = "matching"
    PRESETS: ClassVar[dict[str, dict]] = {
        "quick": dict(epochs=2, batch_size=32, lr=2e-3, n_train=64, n_test=20, embed_dim=32, word_dim=16,
                      channels=(8, 16), strides=(2, 2), pool=(2, 2), warmup_epochs=1),
        "demo": dict(epochs=8, batch_size=32, lr=3e-3, lr_decay_epoch=6, n_train=3000, n_test=None,
                     embed_dim=128, word_dim=64, channels=(16, 32), strides=(2, 2), pool=(3, 3),
                     max_violation=True, warmup_epochs=3,
                     alignment_options=MATCHING_ALIGNMENT),
        "full": dict(epochs=12, batch_size=32, lr=3e-3, lr_decay_epoch=9, n_train=6000, n_test=None,
                     embed_dim=128, word_dim=64, channels=(16, 32), strides=(2, 2), pool=(3, 3),
                     max_violation=True, warmup_epochs=3,
                     alignment_options=MATCHING_ALIGNMENT),
    }

    embed_dim: int = 128
    word_dim: int = 64
    channels: tuple = (16, 32)
    strides: tuple = (2, 2)
    pool: tuple = (3, 3)
    sampling_ratio: int = 2
    pixels: bool = True
    direction: str = "t2i"
    agg: str = "mean"
    lambda_softmax: float | None = None
    lambda_lse: float | None = None
    norm: str = "clipped_l2norm"
    rcar: dict | None = None
    margin: float = 0.2
    max_violation: bool = True
    warmup_epochs: int = 2
    captions_per_image: int = 5
    eval_every: int = 0
    alignment_options: dict = field(default_factory=dict)
