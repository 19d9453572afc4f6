"""Slow, obviously-correct reference implementations for the tests.

They follow the *structure* of the public SCAN and RCAR codes (written from the spec in
REFERENCE_MODELS.md, not copied): a Python loop over captions, each caption sliced to its real
length and repeated over all images, small batched products, the attention function with the
``raw_feature_norm`` options, a cosine over the feature axis and the pooling. Unlike the
public code they do not ``squeeze`` away singleton axes, so one image or one-word captions work.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-8


def l2norm(x, dim, eps=EPS):
    return x / (x.pow(2).sum(dim=dim, keepdim=True).sqrt() + eps)


def l1norm(x, dim, eps=EPS):
    return x / (x.abs().sum(dim=dim, keepdim=True) + eps)


def cosine(x1, x2, dim, eps=EPS):
    w12 = (x1 * x2).sum(dim)
    return w12 / (x1.norm(dim=dim) * x2.norm(dim=dim)).clamp(min=eps)


def func_attention(query, context, raw_feature_norm, smooth, score_fn=None):
    """query [B, Lq, d], context [B, Lk, d] -> (weighted context [B, Lq, d], attn [B, Lq, Lk]).

    Scores are (B, Lk, Lq) as in the public code; normalised over the query axis (dim 2),
    softmax over the context axis.
    """
    if score_fn is None:
        attn = torch.bmm(context, query.transpose(1, 2))                 # (B, Lk, Lq)
    else:
        attn = score_fn(query, context).transpose(1, 2)                   # (B, Lq, Lk) -> (B, Lk, Lq)
    if raw_feature_norm == "softmax":
        attn = torch.softmax(attn, dim=2)
    elif raw_feature_norm == "l2norm":
        attn = l2norm(attn, 2)
    elif raw_feature_norm == "clipped_l2norm":
        attn = l2norm(F.leaky_relu(attn, 0.1), 2)
    elif raw_feature_norm == "l1norm":
        attn = l1norm(attn, 2)
    elif raw_feature_norm == "clipped_l1norm":
        attn = l1norm(F.leaky_relu(attn, 0.1), 2)
    elif raw_feature_norm == "clipped":
        attn = F.leaky_relu(attn, 0.1)
    elif raw_feature_norm == "no_norm":
        pass
    else:
        raise ValueError(raw_feature_norm)
    attn = attn.transpose(1, 2)                                           # (B, Lq, Lk)
    attn = torch.softmax(attn * smooth, dim=2)
    weighted = torch.bmm(attn, context)                                   # (B, Lq, d)
    return weighted, attn


def pool(row_sim, agg, lambda_lse):
    """row_sim (Ni, n) -> (Ni, 1)."""
    if agg == "lse":
        return torch.log(torch.exp(row_sim * lambda_lse).sum(dim=1, keepdim=True)) / lambda_lse
    if agg == "max":
        return row_sim.max(dim=1, keepdim=True)[0]
    if agg == "sum":
        return row_sim.sum(dim=1, keepdim=True)
    return row_sim.mean(dim=1, keepdim=True)


def xattn_score_t2i(images, captions, lengths, *, norm="clipped_l2norm", lambda_softmax=9.0,
                    agg="mean", lambda_lse=6.0, score_fn=None):
    n_image = images.shape[0]
    sims = []
    for i in range(captions.shape[0]):
        n_word = int(lengths[i])
        cap_i = captions[i, :n_word].unsqueeze(0).repeat(n_image, 1, 1)
        weighted, _ = func_attention(cap_i, images, norm, lambda_softmax, score_fn)
        row_sim = cosine(cap_i, weighted, dim=2)                          # (Ni, n_word)
        sims.append(pool(row_sim, agg, lambda_lse))
    return torch.cat(sims, 1)


def xattn_score_i2t(images, captions, lengths, *, norm="clipped_l2norm", lambda_softmax=4.0,
                    agg="mean", lambda_lse=5.0, score_fn=None):
    n_image = images.shape[0]
    sims = []
    for i in range(captions.shape[0]):
        n_word = int(lengths[i])
        cap_i = captions[i, :n_word].unsqueeze(0).repeat(n_image, 1, 1)
        weighted, _ = func_attention(images, cap_i, norm, lambda_softmax, score_fn)
        row_sim = cosine(images, weighted, dim=2)                         # (Ni, R)
        sims.append(pool(row_sim, agg, lambda_lse))
    return torch.cat(sims, 1)


def contrastive_loss_loop(S, margin=0.2, max_violation=False):
    """Pure-Python double loop of the VSE++ hinge loss."""
    n = S.shape[0]
    S = S.tolist()
    cap = [[max(0.0, margin + S[i][j] - S[i][i]) if i != j else 0.0 for j in range(n)] for i in range(n)]
    img = [[max(0.0, margin + S[i][j] - S[j][j]) if i != j else 0.0 for j in range(n)] for i in range(n)]
    if max_violation:
        return sum(max(row) for row in cap) + sum(max(img[i][j] for i in range(n)) for j in range(n))
    return sum(map(sum, cap)) + sum(map(sum, img))


# ----------------------------------------------------------------------------------- RCAR
def rcar_cross_attention(query, context, matrix, smooth, align=None):
    """query (B, Lq, d) * matrix, context (B, Lk, d); smooth scalar or (B, Lq, 1).
    ``align(q (B, Lq, d), k (B, Lk, d)) -> (B, Lq, Lk)`` replaces the dot product when given."""
    q = query * matrix
    if align is None:
        attn = torch.bmm(context, q.transpose(1, 2))                      # (B, Lk, Lq)
    else:
        attn = align(q, context).transpose(1, 2)
    attn = l2norm(F.leaky_relu(attn, 0.1), 2)
    attn = attn.transpose(1, 2)
    attn = torch.softmax(attn * smooth, dim=2)
    return l2norm(torch.bmm(attn, context), -1)


def rcar_alignment_vector(lin, query, context, matrix, smooth, align=None):
    c = rcar_cross_attention(query, context, matrix, smooth, align)
    return l2norm(lin(torch.pow(query - c, 2)), -1)


def rcar_rcr(x, matrix, smooth, mod):
    (m1, _, m2), (s1, _, s2) = mod["matrix"], mod["smooth"]
    matrix = (torch.tanh(m2(torch.tanh(m1(x)))) + matrix).clamp(min=-1, max=1)
    smooth = torch.relu(s2(torch.tanh(s1(x))) + smooth)
    return matrix, smooth


def rcar_rar(mid, hig, mod):
    k = torch.tanh(mod["k"](mid))
    q = torch.tanh(mod["q"](hig))[:, None, :].repeat(1, mid.shape[1], 1)
    w = torch.softmax(mod["v"](k * q).squeeze(2), dim=1)
    return l2norm((w[:, :, None] * mid).sum(dim=1), -1)


def rcar_reference(model, images, captions, lengths, *, mode, steps, direction, smooth0, align=None):
    """Per-caption loop following the public similarity encoder; uses the Linear layers of an
    :class:`attnlens.models.rcar.RCARSimilarity` ``model`` (its own forward is not used).
    ``align``: an alignment function's batched forward in place of the dot product (None: dot)."""
    alv = [m.sim_transform_w for m in model.alv_modules]
    rcr = [{"matrix": m.rcr_matrix_w, "smooth": m.rcr_smooth_w} for m in model.rcr_modules]
    rar = [{"q": m.rar_q_w[0], "k": m.rar_k_w[0], "v": m.rar_v_w[0]} for m in model.rar_modules]
    n_image, d = images.shape[0], images.shape[-1]
    out = []
    for i in range(captions.shape[0]):
        cap = captions[i, :int(lengths[i])].unsqueeze(0).repeat(n_image, 1, 1)
        query, context = (cap, images) if direction == "t2i" else (images, cap)
        matrix = torch.ones(d, dtype=images.dtype)
        smooth = smooth0
        if mode == "rar":
            mid = rcar_alignment_vector(alv[0], query, context, matrix, smooth, align)
            hig = mid.mean(1)
            for mod in rar:
                hig = rcar_rar(mid, hig, mod)
            sim = torch.sigmoid(model.sim_eval_w(hig))
        elif mode == "rcr":
            for m in range(steps):
                mid = rcar_alignment_vector(alv[m], query, context, matrix, smooth, align)
                matrix, smooth = rcar_rcr(mid, matrix, smooth, rcr[m])
            c = rcar_cross_attention(query, context, matrix, smooth, align)
            sim = cosine(query, c, dim=2).mean(dim=1, keepdim=True)
        else:
            for m in range(steps):
                mid = rcar_alignment_vector(alv[m], query, context, matrix, smooth, align)
                if m == 0:
                    hig = mid.mean(1)
                if m < steps - 1:
                    matrix, smooth = rcar_rcr(mid, matrix, smooth, rcr[m])
                hig = rcar_rar(mid, hig, rar[m])
            sim = torch.sigmoid(model.sim_eval_w(hig))
        out.append(sim)
    return torch.cat(out, 1)
