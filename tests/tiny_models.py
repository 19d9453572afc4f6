"""Tiny transformers models built from configs (random weights), shared by the tests."""
from __future__ import annotations


def tiny_blip(vision_layers: int = 2):
    """A BLIP image-text retrieval model: 2 text layers, ``vision_layers`` vision layers, 32 px images of
    4 x 4 patches, hidden size 16 (eval mode; seed the global RNG first for fixed weights)."""
    import transformers

    cfg = transformers.BlipConfig(
        text_config=dict(vocab_size=40, hidden_size=16, num_attention_heads=2, num_hidden_layers=2,
                         intermediate_size=24, encoder_hidden_size=16, max_position_embeddings=16,
                         bos_token_id=1, sep_token_id=2, pad_token_id=0),
        vision_config=dict(hidden_size=16, num_attention_heads=2, num_hidden_layers=vision_layers,
                           intermediate_size=24, image_size=32, patch_size=8),
        image_text_hidden_size=16)
    return transformers.BlipForImageTextRetrieval(cfg).eval()
