"""Models whose attention uses a pluggable alignment function."""
from .attention import (AttentionOutput, AttentionProbe, CrossAttention, NORMS, ProbeRecord,
                        l1norm, l2norm, length_mask, masked_softmax, normalize_scores)

__all__ = ["AttentionOutput", "AttentionProbe", "CrossAttention", "NORMS", "ProbeRecord", "l1norm",
           "l2norm", "length_mask", "masked_softmax", "normalize_scores"]
