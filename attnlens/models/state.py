"""Strict state-dict loading with an error that names what does not fit."""
from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from ..errors import CheckpointError


def state_mismatch(module: nn.Module, state: Mapping[str, torch.Tensor], *, shown: int = 12) -> str:
    """What keeps ``state`` from loading strictly into ``module`` ("" when it fits).

    >>> state_mismatch(nn.Linear(2, 3), {"weight": torch.zeros(3, 2), "bias": torch.zeros(3)})
    ''
    >>> state_mismatch(nn.Linear(2, 3), {"weight": torch.zeros(4, 2)})
    'missing from the checkpoint: bias; of another shape: weight: checkpoint (4, 2) vs model (3, 2)'
    """
    own = module.state_dict()
    if not isinstance(state, Mapping):
        return f"the state is a {type(state).__name__}, not a mapping of names to tensors"
    odd = sorted(str(k) for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor))
    if odd:
        return f"entries that are not named tensors: {', '.join(odd[:shown])}"
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                    for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    parts = []
    for what, keys in (("missing from the checkpoint", missing), ("unexpected in the checkpoint", unexpected),
                       ("of another shape", shapes)):
        if keys:
            listed = ", ".join(keys[:shown]) + (f", ... ({len(keys)} in all)" if len(keys) > shown else "")
            parts.append(f"{what}: {listed}")
    return "; ".join(parts)


def load_state_strict(module: nn.Module, state: Mapping[str, torch.Tensor], where: str) -> nn.Module:
    """``module.load_state_dict(state)`` after checking every key and shape; a mismatch raises
    :class:`~attnlens.errors.CheckpointError` starting with ``where``."""
    problem = state_mismatch(module, state)
    if problem:
        raise CheckpointError(f"{where}: {problem}")
    module.load_state_dict(dict(state), strict=True)
    return module
