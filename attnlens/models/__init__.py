"""Models whose attention uses a pluggable alignment function."""
from .attention import (AttentionOutput, AttentionProbe, CrossAttention, NORMS, ProbeRecord,
                        l1norm, l2norm, length_mask, masked_softmax, normalize_scores)

__all__ = ["AttentionOutput", "AttentionProbe", "CrossAttention", "NORMS", "ProbeRecord", "l1norm",
           "l2norm", "length_mask", "masked_softmax", "normalize_scores"]

# SCAN / RCAR / encoders (issue 2)
from .scan import ScanSimilarity, similarity  # noqa: E402
from .retrieval import coco_1k, contrastive_loss, recall_metrics  # noqa: E402
from .encoders import GRUTextEncoder, PrecompImageEncoder  # noqa: E402
from .rcar import RCARSimilarity  # noqa: E402
from .checkpoints import load_rcar_checkpoint, load_scan_checkpoint  # noqa: E402

__all__ += ["ScanSimilarity", "similarity", "coco_1k", "contrastive_loss", "recall_metrics", "GRUTextEncoder",
            "PrecompImageEncoder", "RCARSimilarity", "load_rcar_checkpoint", "load_scan_checkpoint"]
