"""One forward (and at most one backward) pass of a model, read as a sequence of attention steps.

Every explainer starts from a :class:`Trace`: the model's attention maps, recorded with
:func:`attnlens.capture` (``grad=True`` when gradients are needed; capture is the only way
attention reaches the explainers), put in a common form by the model's
:class:`~attnlens.explain.profiles.Profile`:

* a **stream** is a sequence of tokens that attention layers read and write: ``"text"`` and
  ``"image"`` for a dual-stream model (LXMERT; attnlens' own cross-attention models), one
  ``"joint"`` stream for a single-stream model (VisualBERT, ViLT), with the positions of the
  text and image tokens inside it (:class:`Layout`);
* a :class:`Step` is one attention call: query stream attending over a key stream (the same
  stream for self-attention), weights ``[B, H, Q, K]`` (``H = 1`` for head-less attention) and,
  with gradients, ``dOut/dA`` of the same shape;
* steps with the same ``stage`` read the same state (both directions of LXMERT's
  co-attention read the layer's input); stages are ordered by their first call.

Gradients: ``target(output)`` gives one scalar per example; its sum is differentiated once
with respect to every recorded map (``torch.autograd.grad``, so no parameter receives a
``.grad``). Examples of a batch do not interact, so the gradient of the sum is every example's
own gradient: one backward pass serves every example, every layer and every query token.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch

from ..errors import ExplainError, ShapeError


@dataclass
class Step:
    """One attention call in the common form.

    Attributes:
        site: capture site name.
        stage: index of the stage (steps of one stage read the same relevance state).
        query / key: stream names (equal for self-attention).
        weights: ``[B, H, Q, K]`` attention weights (detached).
        grad: ``[B, H, Q, K]`` gradient of the summed target with respect to the weights, or None.
        layer: the map's layer index (None when unknown).
        kind: ``"attention"``, or ``"link"``: no attention call but the hand-over of tokens from one
            stream to another (BLIP-2's Q-Former outputs become the language model's image tokens):
            ``weights[b, 0, i, j] = 1`` when token ``i`` of the query stream *is* token ``j`` of the
            key stream (its rows replace, they do not mix; see :mod:`.relevance`, :mod:`.rollout`).
    """

    site: str
    stage: int
    query: str
    key: str
    weights: torch.Tensor
    grad: torch.Tensor | None = None
    layer: int | None = None
    kind: str = "attention"

    @property
    def is_self(self) -> bool:
        return self.query == self.key


@dataclass(frozen=True)
class Layout:
    """Where the text (rows) and image (columns) tokens of the explanation are.

    Attributes:
        text: ``(stream, positions)`` of the text tokens (positions: a long tensor, or None = all).
        image: ``(stream, positions)`` of the image tokens (regions or patches).
        query_dim / key_dim: axis names of the resulting map (``"word"``, ``"region"``/``"patch"``).
        grid: ``(rows, cols)`` of a patch image side, or None.
        cells: grid cell of each image column (:meth:`place`); row_mean: average the rows into one.
        key_modality: modality of the columns (``"image"``; ``"text"`` for a dual encoder's text tower).
    """

    text: tuple[str, torch.Tensor | None]
    image: tuple[str, torch.Tensor | None]
    query_dim: str = "word"
    key_dim: str = "region"
    grid: tuple[int, int] | None = None
    cells: torch.Tensor | None = None
    row_mean: bool = False
    key_modality: str = "image"

    def place(self, block: torch.Tensor) -> torch.Tensor:
        """The ``[B, rows, image]`` block in the map's final form: each image column moved to its
        grid cell when ``cells`` is set (``[B, n]`` or ``[n]`` cell index per image column, ``-1`` for
        a column that is no cell; cells no column reaches stay 0), and the rows averaged into one
        (``row_mean``: a dual encoder without ``[CLS]``)."""
        if self.cells is not None:
            b, q, _ = block.shape
            n = self.grid[0] * self.grid[1]
            cells = self.cells.to(block.device).expand(b, -1)
            index = torch.where(cells >= 0, cells, torch.full_like(cells, n))[:, None, :].expand(b, q, -1)
            block = block.new_zeros(b, q, n + 1).scatter(2, index, block)[..., :n]
        if self.row_mean:
            block = block.mean(1, keepdim=True)
        return block


@dataclass
class Trace:
    """What a forward (and backward) pass of the model gave (see the module docstring)."""

    steps: list[Step]
    streams: dict[str, int]
    layout: Layout
    output: Any
    scores: torch.Tensor | None
    meta: dict = field(default_factory=dict)

    @property
    def batch(self) -> int:
        return int(self.steps[0].weights.shape[0])

    def stages(self) -> list[list[Step]]:
        """Steps grouped by stage, in stage order."""
        out: dict[int, list[Step]] = {}
        for s in self.steps:
            out.setdefault(s.stage, []).append(s)
        return [out[k] for k in sorted(out)]

    def block(self, matrix: Mapping[tuple[str, str], torch.Tensor] | torch.Tensor,
              offsets: Mapping[str, int] | None = None) -> tuple[torch.Tensor, bool]:
        """The ``[B, text, image]`` block of per-stream-pair matrices (or of one joint matrix whose
        streams start at ``offsets``), and whether it had to be read transposed (an image->text
        model whose text stream never attends over the image)."""
        (ts, tp), (is_, ip) = self.layout.text, self.layout.image

        def take(s, q, rows, cols):
            if isinstance(matrix, torch.Tensor):
                a, b = offsets[s], offsets[q]
                m = matrix[:, a:a + self.streams[s], b:b + self.streams[q]]
            else:
                m = matrix[(s, q)]
            return select(select(m, 1, rows), 2, cols)

        attn = [st for st in self.steps if st.kind == "attention"]
        transposed = ts != is_ and not any(st.query == ts and st.key == is_ for st in attn) and \
            any(st.query == is_ and st.key == ts for st in attn)
        if transposed:
            return self.layout.place(take(is_, ts, ip, tp).transpose(1, 2)), True
        return self.layout.place(take(ts, is_, tp, ip)), False


def select(t: torch.Tensor, dim: int, positions: torch.Tensor | None) -> torch.Tensor:
    """``t [B, ...]`` at ``positions`` along ``dim``: ``[n]`` shared by the batch, ``[B, n]`` per
    example, or None (all).

    >>> select(torch.arange(6).view(2, 3), 1, torch.tensor([[0, 2], [1, 2]])).tolist()
    [[0, 2], [4, 5]]
    """
    if positions is None:
        return t
    positions = positions.to(t.device)
    if positions.ndim == 1:
        return t.index_select(dim, positions)
    dim = dim % t.ndim
    shape = [1] * t.ndim
    shape[0], shape[dim] = positions.shape
    index = positions.view(shape).expand(*[positions.shape[1] if d == dim else s for d, s in enumerate(t.shape)])
    return t.gather(dim, index)


def default_target(output) -> torch.Tensor:
    """The top logit of each example: ``max`` over the classes of the output's logits.

    Logits are ``output`` itself (a tensor), else its first attribute among ``logits``,
    ``question_answering_score``, ``logits_per_image``, ``itm_score`` (a tuple's first tensor
    otherwise). The gradient of the max is the gradient of the predicted class's logit.

    >>> default_target(torch.tensor([[1.0, 3.0], [2.0, 0.0]])).tolist()
    [3.0, 2.0]
    """
    logits = logits_of(output)
    if logits.ndim == 1:
        return logits
    return logits.reshape(logits.shape[0], -1).amax(-1)


def logits_of(output) -> torch.Tensor:
    """The logits tensor of a model output (see :func:`default_target`)."""
    if isinstance(output, torch.Tensor):
        return output
    for name in ("logits", "question_answering_score", "logits_per_image", "itm_score"):
        value = getattr(output, name, None)
        if value is None and isinstance(output, Mapping):
            value = output.get(name)
        if isinstance(value, torch.Tensor):
            return value
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise ExplainError(f"cannot find logits in a {type(output).__name__} output (no logits, "
                       "question_answering_score, logits_per_image or itm_score); pass target=callable(output) -> "
                       "one scalar per example")


def target_scores(target: Callable, output, batch: int | None = None) -> torch.Tensor:
    """``target(output)`` checked to be one finite scalar per example ``[B]``."""
    scores = target(output)
    if not isinstance(scores, torch.Tensor):
        raise ExplainError(f"target must return a tensor of one scalar per example, got {type(scores).__name__}")
    if scores.ndim == 0:
        scores = scores.reshape(1)
    if scores.ndim != 1 or (batch is not None and scores.shape[0] != batch):
        raise ShapeError(f"target must return [batch] = [{batch}] scalars (one per example), got shape "
                         f"{tuple(scores.shape)}")
    if not scores.is_floating_point():
        raise ExplainError(f"target must return floating-point scores, got {scores.dtype}")
    return scores


def map_gradients(scores: torch.Tensor, weights: list[torch.Tensor]) -> list[torch.Tensor]:
    """``d sum(scores) / d w`` for every ``w`` in one backward pass (zeros where unused)."""
    live = [i for i, w in enumerate(weights) if w.requires_grad]
    if not live:
        raise ExplainError("the recorded attention maps are not in the autograd graph of the target: the "
                           "attention does not depend on anything that requires a gradient")
    if not scores.requires_grad:
        raise ExplainError("the target does not depend on the model's parameters or inputs through autograd "
                           "(was it computed under torch.no_grad or detached?)")
    grads = torch.autograd.grad(scores.sum(), [weights[i] for i in live], allow_unused=True)
    out = [torch.zeros_like(w) for w in weights]
    for i, g in zip(live, grads):
        if g is not None:
            out[i] = g.detach()
    return out
