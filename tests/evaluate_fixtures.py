"""Small grounded datasets written in the real formats, for the evaluate tests and benchmark.

Flickr30K Entities: ``Sentences/<id>.txt`` (bracket markup), ``Annotations/<id>.xml`` (VOC-style
boxes per entity), ``flickr30k-images/<id>.jpg`` and ``features/<id>.npz`` (bottom-up-style
region ``boxes`` and ``features``: the entities' own boxes first, then distractors). Region
features encode which entity a region shows (one-hot of the entity slot, then noise), so a
planted model can attend to the right region by construction.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

WORDS = ("dog", "cat", "man", "ball", "car", "tree")
N_SLOTS = len(WORDS)
FEAT_DIM = 16


def _box(rng, W, H):
    x1, y1 = rng.integers(1, W // 2), rng.integers(1, H // 2)  # VOC boxes are 1-based
    x2, y2 = min(W - 2, x1 + rng.integers(8, W // 2)), min(H - 2, y1 + rng.integers(8, H // 2))
    return [int(x1), int(y1), int(x2), int(y2)]


def grid_boxes(size, grid=(4, 4)) -> np.ndarray:
    """``[rows * cols, 4]`` boxes tiling an image of ``size = (H, W)``."""
    H, W = size
    r, c = grid
    return np.array([[j * W / c, i * H / r, (j + 1) * W / c, (i + 1) * H / r] for i in range(r) for j in range(c)])


def write_flickr30k(root, n_images: int = 6, *, seed: int = 0, size=(48, 64), n_regions: int = 5,
                    images: bool = True, grid: tuple[int, int] | None = None) -> Path:
    """A Flickr30K-Entities-format folder (module docstring); returns ``root``. With ``grid`` the
    region features are on a grid of cells tiling the image instead (no entity slots)."""
    import cv2

    root = Path(root)
    for d in ("Sentences", "Annotations", "flickr30k-images", "features"):
        (root / d).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    H, W = size
    for i in range(n_images):
        iid = f"{1000 + i}"
        a, b = rng.choice(N_SLOTS, 2, replace=False)
        ents = {10 + int(a): _box(rng, W, H), 10 + int(b): _box(rng, W, H)}
        lines = [f"A [/EN#{10 + a}/animals {WORDS[a]}] near a [/EN#{10 + b}/other big {WORDS[b]}] .",
                 f"The [/EN#{10 + b}/other {WORDS[b]}] and the [/EN#0/notvisual sky] ."]
        (root / "Sentences" / f"{iid}.txt").write_text("\n".join(lines) + "\n")
        objs = "".join(f"<object><name>{e}</name><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax>"
                       f"<ymax>{y2}</ymax></bndbox></object>" for e, (x1, y1, x2, y2) in ents.items())
        (root / "Annotations" / f"{iid}.xml").write_text(
            f"<annotation><size><width>{W}</width><height>{H}</height><depth>3</depth></size>{objs}</annotation>")
        if images:
            img = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
            cv2.imwrite(str(root / "flickr30k-images" / f"{iid}.jpg"), img)
        boxes = [ents[10 + int(a)], ents[10 + int(b)]] + [_box(rng, W, H) for _ in range(n_regions - 2)]
        feats = rng.normal(0, 0.1, (n_regions, FEAT_DIM)).astype(np.float32)
        feats[:, :N_SLOTS] = 0
        feats[0, a] = feats[1, b] = 1.0
        if grid is not None:
            boxes = grid_boxes(size, grid)
            feats = rng.normal(0, 1.0, (len(boxes), FEAT_DIM)).astype(np.float32)
        np.savez(root / "features" / f"{iid}.npz", boxes=np.asarray(boxes, dtype=np.float64), features=feats)
    return root


def write_coco(root, n_images: int = 4, *, seed: int = 0, size=(40, 56)) -> Path:
    """``captions_val.json`` + ``instances_val.json`` (+ ``images/``) in COCO's format."""
    import json

    import cv2

    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    H, W = size
    cats = [{"id": k + 1, "name": w, "supercategory": "thing"} for k, w in enumerate(WORDS)]
    images, caps, anns = [], [], []
    for i in range(n_images):
        fn = f"{i:012d}.jpg"
        images.append({"id": i + 1, "file_name": fn, "height": H, "width": W})
        cv2.imwrite(str(root / "images" / fn), rng.integers(0, 255, (H, W, 3), dtype=np.uint8))
        c = int(rng.integers(0, N_SLOTS))
        x1, y1, x2, y2 = _box(rng, W, H)
        anns.append({"id": 100 + i, "image_id": i + 1, "category_id": c + 1, "bbox": [x1, y1, x2 - x1, y2 - y1],
                     "area": float((x2 - x1) * (y2 - y1)), "iscrowd": 0})
        caps.append({"id": 500 + i, "image_id": i + 1, "caption": f"a {WORDS[c]} in the picture"})
    (root / "captions_val.json").write_text(json.dumps({"images": images, "annotations": caps}))
    (root / "instances_val.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return root
