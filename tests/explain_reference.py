"""Slow, obviously-correct references for the explainers, written from the papers' equations.

No attnlens code is used: the attention maps come from the models' own ``output_attentions``
(VisualBERT) or from hooks written here (LXMERT's co-attention and cross-layer self-attention
are never returned by the model), every example is run alone (batch of one, as the authors'
code does), and the relevance rules are applied with 2-D matrices in Python loops over the
layers (and, for the bi-modal rule, over the words), following the structure of Chefer et al.'s
public ``ExplanationGenerator`` (``avg_heads``, ``handle_residual``, ``apply_self_attention_rules``,
``apply_mm_attention_rules``).
"""
from __future__ import annotations

import torch


# ----------------------------------------------------------------------------- Chefer et al. rules
def avg_heads(cam, grad):
    """mean over heads of (grad * cam)^+ ; cam, grad [H, Q, K] -> [Q, K]."""
    return (grad * cam).clamp(min=0).mean(dim=0)


def handle_residual(r):
    """eqs. 8-9: Rhat = (R - I) / rowsum + I, rows with a zero sum left at zero."""
    n = r.shape[-1]
    s = r.clone() - torch.eye(n, dtype=r.dtype)
    for i in range(n):
        total = s[i].sum()
        if total != 0:
            s[i] = s[i] / total
    return s + torch.eye(n, dtype=r.dtype)


def mm_rule(r_ss, r_qq, r_qs, cam_sq):
    """eqs. 10-11, one word (row) at a time: returns (R_sq addition, R_ss addition)."""
    rs, rq = handle_residual(r_ss), handle_residual(r_qq)
    inner = cam_sq @ rq
    add_sq = torch.zeros(r_ss.shape[0], r_qq.shape[0], dtype=cam_sq.dtype)
    for w in range(r_ss.shape[0]):                       # row w of Rhat_ss^T @ inner
        for v in range(r_ss.shape[0]):
            add_sq[w] += rs[v, w] * inner[v]
    add_ss = cam_sq @ r_qs
    return add_sq, add_ss


# ----------------------------------------------------------------------------- recording helpers
class Recorder:
    """Forces ``output_attentions=True`` on the given attention modules and keeps the weights."""

    def __init__(self, modules: dict[str, torch.nn.Module], position: dict[str, int]):
        self.modules, self.position = modules, position
        self.records: list[tuple[str, torch.Tensor]] = []
        self.handles = []

    def __enter__(self):
        for name, mod in self.modules.items():
            pos = self.position[name]

            def pre(m, args, kwargs, _p=pos):
                if len(args) > _p:
                    args = (*args[:_p], True, *args[_p + 1:])
                else:
                    kwargs = {**kwargs, "output_attentions": True}
                return args, kwargs

            def post(m, args, kwargs, out, _n=name):
                self.records.append((_n, out[1]))
                return out[:1]

            self.handles.append(mod.register_forward_pre_hook(pre, with_kwargs=True))
            self.handles.append(mod.register_forward_hook(post, with_kwargs=True))
        return self.records

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        return False


def lxmert_records(model, inputs, target, grad=True):
    """Per-example list of (kind, layer, direction, A [H,Q,K], grad [H,Q,K]) in call order for LXMERT."""
    base = model.lxmert if hasattr(model, "lxmert") else model
    enc = base.encoder
    modules, pos = {}, {}
    for i, layer in enumerate(enc.layer):
        modules[f"l{i}"] = layer.attention.self
    for i, layer in enumerate(enc.r_layers):
        modules[f"r{i}"] = layer.attention.self
    for i, layer in enumerate(enc.x_layers):
        modules[f"x{i}"] = layer.visual_attention.att
        modules[f"xl{i}"] = layer.lang_self_att.self
        modules[f"xv{i}"] = layer.visn_self_att.self
    for k in modules:
        pos[k] = 3
    out = []
    B = inputs["input_ids"].shape[0]
    for b in range(B):
        one = {k: v[b:b + 1] for k, v in inputs.items()}
        with torch.set_grad_enabled(grad), Recorder(modules, pos) as recs:
            for p in model.parameters():
                p.requires_grad_(True)
            o = model(**one)
            grads = [None] * len(recs)
            if grad:
                grads = torch.autograd.grad(target(o).sum(), [a for _, a in recs], allow_unused=True)
        items, seen_x = [], {}
        for (name, a), g in zip(recs, grads):
            g = torch.zeros_like(a) if g is None else g
            if name.startswith("x") and name[1].isdigit():
                d = "t2i" if seen_x.get(name, 0) == 0 else "i2t"
                seen_x[name] = seen_x.get(name, 0) + 1
                items.append(("cross", int(name[1:]), d, a[0].detach(), g[0].detach()))
            elif name.startswith("xl"):
                items.append(("xself", int(name[2:]), "text", a[0].detach(), g[0].detach()))
            elif name.startswith("xv"):
                items.append(("xself", int(name[2:]), "image", a[0].detach(), g[0].detach()))
            else:
                items.append(("self", int(name[1:]), "text" if name[0] == "l" else "image", a[0].detach(),
                              g[0].detach()))
        out.append(items)
    return out


def chefer_lxmert(records_one, n_text, n_image):
    """Chefer et al.'s generate_ours (attention-gradient version) for one LXMERT example -> R_t_i."""
    R_tt, R_ii = torch.eye(n_text, dtype=torch.float64), torch.eye(n_image, dtype=torch.float64)
    R_ti, R_it = torch.zeros(n_text, n_image, dtype=torch.float64), torch.zeros(n_image, n_text, dtype=torch.float64)
    for kind, layer, which, a, g in records_one:
        if kind == "self":
            cam = avg_heads(a.double(), g.double())
            if which == "text":
                R_tt = R_tt + cam @ R_tt
            else:
                R_ii = R_ii + cam @ R_ii
    layers = sorted({layer for kind, layer, *_ in records_one if kind == "cross"})
    for i in layers:
        rec = {(k, w): (a.double(), g.double()) for k, l, w, a, g in records_one if l == i and k != "self"}
        cam_ti = avg_heads(*rec[("cross", "t2i")])
        cam_it = avg_heads(*rec[("cross", "i2t")])
        add_ti, add_tt = mm_rule(R_tt, R_ii, R_it, cam_ti)
        add_it, add_ii = mm_rule(R_ii, R_tt, R_ti, cam_it)
        R_ti, R_tt, R_it, R_ii = R_ti + add_ti, R_tt + add_tt, R_it + add_it, R_ii + add_ii
        cam_tt = avg_heads(*rec[("xself", "text")])
        cam_vv = avg_heads(*rec[("xself", "image")])
        R_tt, R_ti = R_tt + cam_tt @ R_tt, R_ti + cam_tt @ R_ti
        R_ii, R_it = R_ii + cam_vv @ R_ii, R_it + cam_vv @ R_it
    return R_ti


def joint_attentions(model, inputs, target, grad=True):
    """Per example, the list of (A [H,N,N], grad) from a single-stream model's own output_attentions."""
    out = []
    B = inputs["input_ids"].shape[0]
    for b in range(B):
        one = {k: v[b:b + 1] for k, v in inputs.items()}
        with torch.enable_grad():
            for p in model.parameters():
                p.requires_grad_(True)
            o = model(**one, output_attentions=True)
            atts = list(o.attentions)
            gs = torch.autograd.grad(target(o).sum(), atts, allow_unused=True) if grad else [None] * len(atts)
        out.append([(a[0].detach().double(), None if g is None else g[0].detach().double()) for a, g in zip(atts, gs)])
    return out


def chefer_single_stream(layers, text, image):
    """Chefer et al.'s self-attention rule over the layers of one example -> R[text][:, image]."""
    n = layers[0][0].shape[-1]
    R = torch.eye(n, dtype=torch.float64)
    for a, g in layers:
        R = R + avg_heads(a, g) @ R
    return R[text][:, image]


def rollout_single_stream(layers, text, image, fuse="mean"):
    """Abnar & Zuidema's rollout: per layer 0.5 A + 0.5 I, rows renormalised, multiplied in order."""
    n = layers[0][0].shape[-1]
    R = torch.eye(n, dtype=torch.float64)
    for a, _ in layers:
        f = {"mean": a.mean(0), "max": a.max(0).values, "min": a.min(0).values}[fuse]
        w = 0.5 * f + 0.5 * torch.eye(n, dtype=torch.float64)
        for i in range(n):
            w[i] = w[i] / w[i].sum()
        R = w @ R
    return R[text][:, image]


def rollout_lxmert(records_one, n_text, n_image):
    """The joint-graph rollout of attnlens' rollout for LXMERT, written per stage for one example."""
    n = n_text + n_image
    R = torch.eye(n, dtype=torch.float64)
    stages = []
    for kind, layer, which, a, g in records_one:
        key = (kind if kind != "cross" else "cross", layer)
        if not stages or stages[-1][0] != key:
            stages.append((key, []))
        stages[-1][1].append((kind, which, a.double().mean(0)))
    for _, steps in stages:
        M = torch.eye(n, dtype=torch.float64)
        for kind, which, a in steps:
            if kind == "cross":
                rows, cols = (slice(0, n_text), slice(n_text, n)) if which == "t2i" else (slice(n_text, n), slice(0, n_text))
            else:
                rows = cols = slice(0, n_text) if which == "text" else slice(n_text, n)
            block = torch.zeros(rows.stop - rows.start, n, dtype=torch.float64)
            block[:, rows] = 0.5 * torch.eye(rows.stop - rows.start, dtype=torch.float64)
            block[:, cols] += 0.5 * a
            for i in range(block.shape[0]):
                block[i] = block[i] / block[i].sum()
            M[rows] = block
        R = M @ R
    return R[:n_text, n_text:]


def blip_relevance(model, inputs, target):
    """Chefer et al.'s rules for BLIP ITM, one example at a time: vision self-attention (image stream,
    [CLS] + patches), then per text layer self-attention and text->image cross-attention -> R_t_i
    without the [CLS] image column."""
    mods = []
    for path, m in model.named_modules():
        if type(m).__name__ == "BlipAttention" or (type(m).__name__ == "BlipTextSelfAttention"):
            mods.append((path, m))
    out = []
    for b in range(inputs["input_ids"].shape[0]):
        one = {k: v[b:b + 1] for k, v in inputs.items()}
        recs, handles = [], []
        for path, m in mods:
            handles.append(m.register_forward_hook(lambda mod, a, o, _p=path: recs.append((_p, o[1]))))
        try:
            with torch.enable_grad():
                for p in model.parameters():
                    p.requires_grad_(True)
                score = target(model(**one)).sum()
                grads = torch.autograd.grad(score, [a for _, a in recs], allow_unused=True)
        finally:
            for h in handles:
                h.remove()
        R_tt = R_ii = R_ti = R_it = None
        for (path, a), g in zip(recs, grads):
            a = a[0].detach().double()
            g = torch.zeros_like(a) if g is None else g[0].detach().double()
            cam = avg_heads(a, g)
            if R_tt is None and "vision_model" not in path:
                n_t = a.shape[-2]
                R_tt, R_ti = torch.eye(n_t, dtype=torch.float64), torch.zeros(n_t, R_ii.shape[0], dtype=torch.float64)
                R_it = torch.zeros(R_ii.shape[0], n_t, dtype=torch.float64)
            if "vision_model" in path:
                R_ii = torch.eye(a.shape[-1], dtype=torch.float64) if R_ii is None else R_ii
                R_ii = R_ii + cam @ R_ii
            elif path.endswith("crossattention.self"):
                add_ti, add_tt = mm_rule(R_tt, R_ii, R_it, cam)
                R_ti, R_tt = R_ti + add_ti, R_tt + add_tt
            else:
                R_tt, R_ti = R_tt + cam @ R_tt, R_ti + cam @ R_ti
        out.append(R_ti[:, 1:])
    return out


def attention_flow_single_stream(layers, text, image):
    """Abnar & Zuidema's attention flow with networkx (float capacities): per layer 0.5 A + 0.5 I
    (head mean, rows renormalised) as capacities from level l + 1 to level l, max flow from each
    text token at the top to each image token at level 0."""
    import networkx as nx

    n = layers[0][0].shape[-1]
    g = nx.DiGraph()
    for l, (a, _) in enumerate(layers):
        w = 0.5 * a.mean(0) + 0.5 * torch.eye(n, dtype=torch.float64)
        w = w / w.sum(-1, keepdim=True)
        for i in range(n):
            for j in range(n):
                if w[i, j] > 0:
                    g.add_edge((l + 1, i), (l, j), capacity=float(w[i, j]))
    top = len(layers)
    out = torch.zeros(len(text), len(image), dtype=torch.float64)
    for x, t in enumerate(text):
        for y, r in enumerate(image):
            out[x, y] = nx.maximum_flow_value(g, (top, t), (0, r))
    return out


# ----------------------------------------------------------------------------- ViLT, CLIP / SigLIP, LLaVA-style
def eager_copy(model):
    """A deep copy of a transformers model switched to eager attention (its own output_attentions)."""
    import copy

    ref = copy.deepcopy(model)
    for m in ref.modules():
        cfg = getattr(m, "config", None)
        if hasattr(cfg, "_attn_implementation_internal"):
            cfg._attn_implementation_internal = "eager"
    return ref


def layer_attentions(model, inputs, target, attentions, grad=True):
    """Per example (batch of one), the list of (A [H,N,N], grad) of ``attentions(output)`` (the model's own
    output_attentions, e.g. ``lambda o: o.vision_model_output.attentions``)."""
    out = []
    B = inputs["input_ids"].shape[0]
    for b in range(B):
        one = {k: v[b:b + 1] if k != "pixel_values" or v.shape[0] == B else v for k, v in inputs.items()}
        with torch.enable_grad():
            for p in model.parameters():
                p.requires_grad_(True)
            o = model(**one, output_attentions=True)
            atts = list(attentions(o))
            gs = torch.autograd.grad(target(o).sum(), atts, allow_unused=True) if grad else [None] * len(atts)
        out.append([(a[0].detach().double(), None if not grad else torch.zeros_like(a[0]).double() if g is None else
                     g[0].detach().double()) for a, g in zip(atts, gs)])
    return out


def vilt_attentions(model, inputs, target, grad=True):
    """Per example (batch of one): (layers [(A, grad)], grid cells of the sequence's patches in order).

    ViLT shuffles its kept patches (``torch.multinomial`` in ``visual_embed``), so the cell of each
    patch token is read from the ``patch_index`` that ``visual_embed`` returns (wrapped here for the
    call, restored after); with one example and ``max_image_length=-1`` every valid patch is kept."""
    emb = model.vilt.embeddings
    bound, seen = emb.visual_embed, {}

    def visual_embed(*a, **kw):
        out = bound(*a, **kw)
        patch_index, (h, w) = out[2]
        seen["cells"] = [int(r) * int(w) + int(c) for r, c in patch_index[0].tolist()]
        return out

    out = []
    B = inputs["input_ids"].shape[0]
    emb.visual_embed = visual_embed
    try:
        for b in range(B):
            layers = layer_attentions(model, {k: v[b:b + 1] for k, v in inputs.items()}, target,
                                      lambda o: o.attentions, grad=grad)[0]
            out.append((layers, seen["cells"]))
    finally:
        del emb.visual_embed
    return out


def on_grid(block, cells, n_cells):
    """[Q, n] columns placed at their grid cells -> [Q, n_cells], other cells 0, by a loop."""
    out = torch.zeros(block.shape[0], n_cells, dtype=block.dtype)
    for j, c in enumerate(cells):
        out[:, c] = block[:, j]
    return out


def attention_x_gradient_block(layer, text, image):
    """mean_h (grad * A)^+ of one layer, text rows x image columns."""
    a, g = layer
    return avg_heads(a, g)[text][:, image]


def blip2_records(model, inputs, target):
    """Per example (batch of one): dict of per-layer (A [H,Q,K], grad) lists of a BLIP-2 model (eager):
    ``vision``, ``qself``, ``qcross``, ``lm``, read by plain forward hooks on its attention modules
    (``output[1]``; transformers' BLIP-2 returns only the language model's output_attentions)."""
    kinds = {}
    for path, m in model.named_modules():
        if path.startswith("vision_model.") and path.endswith("self_attn"):
            kinds[path] = "vision"
        elif path.startswith("qformer.") and path.endswith("crossattention.attention"):
            kinds[path] = "qcross"
        elif path.startswith("qformer.") and path.endswith(".attention.attention"):
            kinds[path] = "qself"
        elif path.startswith("language_model.") and path.endswith("self_attn"):
            kinds[path] = "lm"
    out = []
    for b in range(inputs["input_ids"].shape[0]):
        one = {k: v[b:b + 1] for k, v in inputs.items()}
        seen, handles = [], []
        for path, kind in kinds.items():
            handles.append(model.get_submodule(path).register_forward_hook(
                lambda mod, a, o, _k=kind: seen.append((_k, o[1]))))
        try:
            with torch.enable_grad():
                for p in model.parameters():
                    p.requires_grad_(True)
                o = model(**one, output_attentions=True)
                grads = torch.autograd.grad(target(o).sum(), [a for _, a in seen], allow_unused=True)
        finally:
            for h in handles:
                h.remove()
        rec = {"vision": [], "qself": [], "qcross": [], "lm": []}
        for (kind, a), g in zip(seen, grads):
            rec[kind].append((a[0].detach().double(), torch.zeros_like(a[0]).double() if g is None else
                              g[0].detach().double()))
        out.append(rec)
    return out


def chefer_blip2(rec, text, image_positions):
    """Chefer et al.'s rules through BLIP-2 / InstructBLIP, one example: vision self-attention (R_ii), per Q-Former layer
    self-attention then the bi-modal rule of its query -> image cross-attention (R_qq, R_qi), then the
    language model's tokens at the image positions take their query token's R_qi row and the LM's
    self-attention rule carries it on -> R_ji[text] without the vision [CLS] column."""
    eye = lambda n: torch.eye(n, dtype=torch.float64)  # noqa: E731
    n_i = rec["vision"][0][0].shape[-1]
    R_ii = eye(n_i)
    for a, g in rec["vision"]:
        R_ii = R_ii + avg_heads(a, g) @ R_ii
    n_q = rec["qself"][0][0].shape[-1]
    R_qq, R_qi, R_iq = eye(n_q), torch.zeros(n_q, n_i, dtype=torch.float64), torch.zeros(n_i, n_q, dtype=torch.float64)
    for (a, g), (ca, cg) in zip(rec["qself"], rec["qcross"]):
        cam = avg_heads(a, g)
        R_qq, R_qi = R_qq + cam @ R_qq, R_qi + cam @ R_qi
        cross = torch.zeros(n_q, n_i, dtype=torch.float64)  # InstructBLIP: the instruction tokens do not cross-attend
        cross[:ca.shape[-2]] = avg_heads(ca, cg)
        add_qi, add_qq = mm_rule(R_qq, R_ii, R_iq, cross)
        R_qi, R_qq = R_qi + add_qi, R_qq + add_qq
    n_j = rec["lm"][0][0].shape[-1]
    R_ji = torch.zeros(n_j, n_i, dtype=torch.float64)
    for j, p in enumerate(image_positions):
        R_ji[p] = R_qi[j]
    for a, g in rec["lm"]:
        R_ji = R_ji + avg_heads(a, g) @ R_ji
    return R_ji[text][:, 1:]


def rollout_blip2(rec, text, image_positions):
    """Rollout over the joint graph [image; query; LM tokens], one example: per stage the attending
    stream's rows 0.5 I + 0.5 A (head mean, rows renormalised by a loop), other rows identity; the link
    stage gives each LM image-token row the one-hot of its query token."""
    n_i, n_q, n_j = rec["vision"][0][0].shape[-1], rec["qself"][0][0].shape[-1], rec["lm"][0][0].shape[-1]
    n = n_i + n_q + n_j
    spans = {"image": (0, n_i), "query": (n_i, n_i + n_q), "joint": (n_i + n_q, n)}
    stages = [("image", "image", a) for a, _ in rec["vision"]]
    for (a, _), (ca, _) in zip(rec["qself"], rec["qcross"]):
        stages += [("query", "query", a), ("query", "image", ca)]
    stages.append("link")
    stages += [("joint", "joint", a) for a, _ in rec["lm"]]
    R = torch.eye(n, dtype=torch.float64)
    for st in stages:
        M = torch.eye(n, dtype=torch.float64)
        if st == "link":
            for j, p in enumerate(image_positions):
                M[n_i + n_q + p] = 0
                M[n_i + n_q + p, n_i + j] = 1
        else:
            (r0, r1), (c0, c1) = spans[st[0]], spans[st[1]]
            block = torch.zeros(r1 - r0, n, dtype=torch.float64)
            block[:, r0:r1] = 0.5 * torch.eye(r1 - r0, dtype=torch.float64)
            att = st[2].mean(0)
            block[:att.shape[0], c0:c1] += 0.5 * att  # rows beyond (InstructBLIP's instruction tokens): identity
            for i in range(block.shape[0]):
                block[i] = block[i] / block[i].sum()
            M[r0:r1] = block
        R = M @ R
    return R[[n_i + n_q + t for t in text]][:, 1:n_i]
