"""Leave the model exactly as it was: train/eval mode, ``requires_grad`` flags, ``.grad`` values.

Explainers run the model in eval mode (dropout off: deterministic relevance) with every
parameter requiring a gradient (so that the attention weights are in the autograd graph even
when the model was frozen); gradients are taken with ``torch.autograd.grad`` with respect to
the attention maps or inputs only, so no parameter's ``.grad`` is written. :func:`preserved`
restores every module's mode, every parameter's flag and ``.grad`` in ``finally``.
"""
from __future__ import annotations

from contextlib import contextmanager

from torch import nn


@contextmanager
def preserved(model: nn.Module, *, eval_mode: bool = True, grad: bool = True):
    """Run the block with ``model`` in eval mode (``eval_mode``) and every parameter requiring a
    gradient (``grad``); restore modes, flags and ``.grad`` afterwards, also after an exception.

    >>> net = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5)).train().requires_grad_(False)
    >>> with preserved(net):
    ...     net.training, net[0].weight.requires_grad
    (False, True)
    >>> net.training, net[0].weight.requires_grad, net[0].weight.grad is None
    (True, False, True)
    """
    modes = [(m, m.training) for m in model.modules()]
    params = [(p, p.requires_grad, p.grad) for p in model.parameters()]
    try:
        if eval_mode:
            model.eval()
        if grad:
            for p, _, _ in params:
                if p.is_floating_point() or p.is_complex():
                    p.requires_grad_(True)
        yield model
    finally:
        for p, flag, g in params:
            p.requires_grad_(flag)
            p.grad = g
        for m, mode in modes:
            m.training = mode
