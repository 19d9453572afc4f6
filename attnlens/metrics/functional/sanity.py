"""Sanity checks of attention as explanation: permutation test and model randomisation.

* :func:`permutation_test` (Jain & Wallace 2019): shuffle each example's attention weights over
  its valid elements (model otherwise frozen) and measure how much the output moves. The output
  change is ``|f(permuted) - f(original)|`` of the scalar scored output (Jain & Wallace use the
  total variation distance of the output distribution; for a scalar score the absolute
  difference is the analogue). Read the median change against the maximum attention weight:
  peaked attention whose permutation changes nothing is not what the model relies on.
* :func:`model_randomisation` (Adebayo et al. 2018): re-initialise the model's layers one by one
  from the top (output side) down, cumulatively (cascading), recompute the explanation and report
  the Spearman rank correlation with the original per example. High correlation after the
  weights are random means the explanation does not reflect the learned model.
"""
from __future__ import annotations

import copy
from typing import Callable, Sequence

import numpy as np
import torch

from ...errors import DTypeError, NonFiniteError, ShapeError
from ._common import as_tensor, check_bool, check_real, chunks, int_param


def permutation_test(score_with_attention: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], attention, *,
                     n_permutations: int = 100, seed: int = 0, valid=None, batch_size: int = 256,
                     progress: bool = False) -> dict[str, torch.Tensor]:
    """Attention-permutation test.

    Args:
        score_with_attention: ``f(attention [M, R], index [M]) -> [M]``: the scored output of
            example ``index[m]`` when the model uses the given attention weights.
        attention: ``[N, R]`` the model's own attention.
        n_permutations: shuffles per example (seeded).
        seed: seed of the shuffles.
        valid: ``[N, R]`` bool; only valid weights are shuffled (padded ones stay in place).
        batch_size: rows per call.

    Returns:
        dict with ``median_change`` ``[N]``, ``max_attention`` ``[N]``, ``original`` ``[N]`` and
        ``changes`` ``[N, n_permutations]``.

    >>> f = lambda att, idx: att[:, 0].double()                 # output = weight of element 0
    >>> r = permutation_test(f, torch.tensor([[0.5, 0.5]]), n_permutations=4)
    >>> r["median_change"].tolist(), r["max_attention"].tolist()
    ([0.0], [0.5])
    """
    att = as_tensor(attention, "permutation_test: attention")
    if att.ndim != 2:
        raise ShapeError(f"permutation_test: attention must be [N, R], got shape {tuple(att.shape)}")
    att = check_real(att, "permutation_test: attention", finite=False)
    n_permutations = int_param(n_permutations, "n_permutations", "permutation_test", lo=1)
    batch_size = int_param(batch_size, "batch_size", "permutation_test", lo=1)
    seed = int_param(seed, "seed", "permutation_test")
    n, r = att.shape
    v = torch.ones_like(att, dtype=torch.bool) if valid is None else check_bool(valid, "permutation_test: valid")
    if v.shape != att.shape:
        raise ShapeError(f"permutation_test: attention {tuple(att.shape)} and valid {tuple(v.shape)} differ")
    v = v.to(att.device)
    if not bool(torch.isfinite(att[v]).all()):
        raise NonFiniteError(f"permutation_test: attention {tuple(att.shape)} has NaN or infinite values at valid "
                             f"elements")
    g = torch.Generator().manual_seed(seed)
    key = torch.rand((n, n_permutations, r), generator=g, dtype=torch.float64)
    key = torch.where(v[:, None, :].cpu(), key, torch.inf)
    # positions in a random order, valid ones first (invalid ones last, ascending)
    perm = torch.argsort(key, dim=2, stable=True).to(att.device)
    vpos = torch.argsort((~v).to(torch.int8), dim=1, stable=True)  # valid positions first, ascending
    # the j-th valid position (vpos[j]) receives the weight found at perm[j]
    full = att[:, None, :].expand(n, n_permutations, r)
    shuffled = torch.empty_like(full).scatter(2, vpos[:, None, :].expand(n, n_permutations, r),
                                              full.gather(2, perm))
    rows = torch.cat([att, shuffled.reshape(n * n_permutations, r)])
    ar = torch.arange(n, device=att.device)
    index = torch.cat([ar, ar.repeat_interleave(n_permutations)])
    y = torch.empty(len(rows), dtype=torch.float64)
    pieces = list(chunks(len(rows), batch_size))
    if progress:
        from tqdm.auto import tqdm
        pieces = tqdm(pieces, desc="permutations", leave=False)
    with torch.no_grad():
        for sl in pieces:
            out = as_tensor(score_with_attention(rows[sl], index[sl]), "score_with_attention output")
            if out.shape != (sl.stop - sl.start,):
                raise ShapeError(f"score_with_attention must return [{sl.stop - sl.start}], got {tuple(out.shape)}")
            out = check_real(out.detach(), "score_with_attention output").double().cpu()
            y[sl] = out
    changes = (y[n:].reshape(n, n_permutations) - y[:n, None]).abs()
    none = ~v.any(1).cpu()   # no valid element: nothing to permute, undefined
    med = changes.median(1).values if n else torch.empty(0, dtype=torch.float64)
    mx = torch.where(v, att, -torch.inf).amax(1).double().cpu() if r else torch.full((n,), -torch.inf,
                                                                                      dtype=torch.float64)
    return {"median_change": torch.where(none, torch.nan, med), "max_attention": torch.where(none, torch.nan, mx),
            "original": y[:n], "changes": changes}


def _spearman_rows(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    from scipy.stats import spearmanr

    out = np.full(len(a), np.nan)
    width = int(np.prod(a.shape[1:]))
    for i, (x, y) in enumerate(zip(a.reshape(len(a), width).numpy(), b.reshape(len(b), width).numpy())):
        ok = np.isfinite(x) & np.isfinite(y)
        if ok.sum() > 1 and x[ok].max() > x[ok].min() and y[ok].max() > y[ok].min():
            out[i] = spearmanr(x[ok], y[ok]).statistic
    return out


def _layers(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))]


def _reinit(module: torch.nn.Module, seed: int) -> None:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
            return
        with torch.no_grad():
            for p in module.parameters(recurse=False):
                std = float(p.std()) if p.numel() > 1 and float(p.std()) > 0 else 0.02
                p.normal_(0.0, std)


def model_randomisation(model: torch.nn.Module | Callable[[], torch.nn.Module],
                        explain: Callable[[torch.nn.Module], torch.Tensor], *, layers: Sequence[str] | None = None,
                        seed: int = 0):
    """Cascading model-parameter randomisation (Adebayo et al. 2018).

    Args:
        model: an ``nn.Module`` (deep-copied, never modified) or a factory returning one.
        explain: ``explain(model) -> [N, ...]`` explanation per example (e.g. attention ``[N, R]``).
        layers: names of the modules to randomise, top (output side) first; default every module
            owning parameters, in reverse registration order.
        seed: seeds the re-initialisation (layer ``i`` uses ``seed + i``).

    Returns:
        A tidy ``pandas.DataFrame`` with columns ``step`` (1 = top layer randomised), ``layer``
        (the layer randomised at that step), ``example`` and ``spearman`` (rank correlation of the
        explanation with the original one).

    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 3))
    >>> x = torch.randn(2, 3, generator=torch.Generator().manual_seed(0))
    >>> df = model_randomisation(net, lambda m: m(x).detach())
    >>> df.layer.unique().tolist()
    ['1', '0']
    """
    import pandas as pd

    seed = int_param(seed, "seed", "model_randomisation")
    if isinstance(layers, str):
        raise DTypeError(f"model_randomisation: layers must be a list of module names, got the string {layers!r}")
    base = model() if not isinstance(model, torch.nn.Module) else copy.deepcopy(model)
    if not isinstance(base, torch.nn.Module):
        raise DTypeError(f"model_randomisation: model must be an nn.Module or a factory of one, got "
                         f"{type(base).__name__}")
    base.eval()
    mods = dict(_layers(base))
    names = list(reversed(list(mods))) if layers is None else list(layers)
    missing = [n for n in names if n not in mods]
    if missing:
        raise ShapeError(f"model_randomisation: no module owning parameters named {missing}; valid: {list(mods)}")
    with torch.no_grad():
        ref = check_real(as_tensor(explain(base), "explain(model)").detach(), "explain(model)", finite=False)
        ref = ref.double().cpu()
    if ref.ndim == 0:
        raise ShapeError("model_randomisation: explain(model) must return [N, ...] (one explanation per example), "
                         "got a scalar")
    rows = []
    for step, name in enumerate(names, start=1):
        _reinit(mods[name], seed + step - 1)
        with torch.no_grad():
            cur = check_real(as_tensor(explain(base), "explain(model)").detach(), "explain(model)", finite=False)
            cur = cur.double().cpu()
        if cur.shape != ref.shape:
            raise ShapeError(f"model_randomisation: explanation changed shape {tuple(ref.shape)} -> {tuple(cur.shape)}")
        for i, rho in enumerate(_spearman_rows(ref, cur)):
            rows.append({"step": step, "layer": name, "example": i, "spearman": float(rho)})
    return pd.DataFrame(rows, columns=["step", "layer", "example", "spearman"])
