"""Model-parameter randomisation check (Adebayo et al., NeurIPS 2018, "Sanity checks for
saliency maps").

An explanation that depends on what the model learned must change when the model's parameters
are re-initialised. :func:`randomisation_check` explains the same inputs with the model and with
a deep copy whose every module with a ``reset_parameters`` method is re-initialised (a seeded
draw; the original model is untouched), and reports, per method, the Spearman rank correlation
between the two maps of each example (over all its word x region cells; a map that became
constant, e.g. all-zero positive relevance, counts as correlation 0, two constant maps as NaN). The target is the same
function of the output for both models; with the default top-logit target the class is fixed to
the trained model's prediction, so both models explain the same logit.

A method **passes** when the mean correlation is below ``threshold`` (default 0.5): the map
changed. Raw attention and rollout of a randomised transformer may well stay correlated with
the trained model's (they do not use the output at all); such methods are reported as failing,
not hidden.
"""
from __future__ import annotations

import copy
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from .profiles import profile_for
from .registry import available, explain
from .trace import default_target, logits_of


def randomised_copy(model: nn.Module, seed: int = 0) -> nn.Module:
    """A deep copy of ``model`` with every ``reset_parameters`` module re-initialised (seeded).

    >>> net = nn.Linear(3, 3)
    >>> bool(torch.equal(randomised_copy(net).weight, net.weight))
    False
    """
    clone = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in clone.modules():
            reset = getattr(m, "reset_parameters", None)
            if callable(reset):
                reset()
    return clone


def _fixed_target(model, inputs, target, profile) -> Callable:
    if target is not None or profile.target is not None:
        return target or profile.target
    was = model.training
    try:
        model.eval()
        with torch.no_grad():
            logits = logits_of(model(**inputs))
    finally:
        model.train(was)
    index = logits.reshape(logits.shape[0], -1).argmax(-1)

    def chosen(output):
        lg = logits_of(output)
        return lg.reshape(lg.shape[0], -1).gather(1, index[:, None].to(lg.device))[:, 0]

    return chosen if logits.ndim > 1 else default_target


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho of two flattened arrays; 0 when exactly one is constant (a constant map ranks
    nothing, so it shares no ranking with the other), NaN when both are.

    >>> spearman(np.array([1.0, 2.0, 3.0]), np.array([10.0, 30.0, 20.0]))
    0.5
    >>> spearman(np.array([1.0, 2.0, 3.0]), np.zeros(3))
    0.0
    """
    from scipy.stats import spearmanr

    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    flat = (len(a) < 2 or np.ptp(a) == 0, len(b) < 2 or np.ptp(b) == 0)
    if all(flat):
        return float("nan")
    if any(flat):
        return 0.0
    return float(spearmanr(a, b).statistic)


def randomisation_check(model: nn.Module, inputs: Mapping, methods: Sequence[str] | None = None, *,
                        target: Callable | None = None, seed: int = 0, threshold: float = 0.5,
                        options: Mapping[str, Mapping] | None = None, profile=None):
    """Rank correlation between each method's maps of ``model`` and of a randomised copy.

    Args:
        model: the trained (or planted) model.
        inputs: the keyword dict of its forward (a batch).
        methods: method names (default: every registered method).
        target: ``callable(output) -> [B]`` (default: the profile's, else the trained model's
            predicted class's logit, the same class for both models).
        seed: seed of the re-initialisation.
        threshold: a method passes when its mean correlation is below this.
        options: per-method options, ``{method: {option: value}}``.

    Returns:
        ``pandas.DataFrame`` with ``method``, ``spearman`` (mean over the examples),
        ``spearman_min``, ``spearman_max``, ``n_examples``, ``passed``, ``error`` (a method that
        could not run on this model, e.g. no image-feature tensor, has NaN and the reason).

    >>> from attnlens.models.scan import ScanSimilarity
    >>> torch.manual_seed(0) is not None
    True
    >>> sim = ScanSimilarity("t2i", dim=8, alignment="general")
    >>> x = dict(images=torch.randn(2, 6, 8), captions=torch.randn(2, 4, 8), lengths=torch.tensor([4, 4]))
    >>> randomisation_check(sim, x, ["raw"]).columns.tolist()[:3]
    ['method', 'spearman', 'spearman_min']
    """
    import pandas as pd

    prof = profile if profile is not None else profile_for(model)
    methods = list(methods) if methods is not None else available()
    options = dict(options or {})
    fixed = _fixed_target(model, inputs, target, prof)
    other = randomised_copy(model, seed)
    rows = []
    for name in methods:
        opts = dict(options.get(name, {}))
        try:
            a = explain(model, inputs, name, target=fixed, profile=prof, **opts).weights
            b = explain(other, inputs, name, target=fixed, profile=prof, **opts).weights
        except Exception as exc:  # reported per method, not hidden
            rows.append({"method": name, "spearman": np.nan, "spearman_min": np.nan, "spearman_max": np.nan,
                         "n_examples": 0, "passed": False, "error": f"{type(exc).__name__}: {exc}"})
            continue
        rhos = [spearman(a[i].cpu().numpy(), b[i].cpu().numpy()) for i in range(a.shape[0])]
        finite = [r for r in rhos if np.isfinite(r)]
        mean = float(np.mean(finite)) if finite else float("nan")
        rows.append({"method": name, "spearman": mean, "spearman_min": float(np.min(finite)) if finite else np.nan,
                     "spearman_max": float(np.max(finite)) if finite else np.nan, "n_examples": len(finite),
                     "passed": bool(np.isfinite(mean) and mean < threshold), "error": ""})
    return pd.DataFrame(rows, columns=["method", "spearman", "spearman_min", "spearman_max", "n_examples",
                                       "passed", "error"])
