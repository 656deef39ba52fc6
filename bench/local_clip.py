"""Build a CLIP with random weights, saved in sentence-transformers format.

Model weights cannot be downloaded everywhere imgsearch is developed, so tests
and benchmarks make their own model and load it through exactly the same code
path as a real one (``SentenceTransformer(directory)``). ``"tiny"`` is a model
of a few hundred kilobytes for tests; ``"vit-b-32"`` has the real ViT-B/32
architecture and therefore the real model's compute cost.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

# Sizes of the two towers. vit-b-32 matches openai/clip-vit-base-patch32.
ARCHITECTURES = {
    "tiny": {
        "text": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=2, max_position_embeddings=77),
        "vision": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=2, image_size=32, patch_size=8),
        "projection_dim": 16,
    },
    # Small and quick, but with CLIP's 224-pixel input and 512-dimensional vectors: random vectors of this many
    # dimensions spread like a real model's, which the auto cutoff's tests need (the tiny model's 16 cannot).
    "small": {
        "text": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=2, max_position_embeddings=77),
        "vision": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                       num_attention_heads=4, image_size=224, patch_size=32),
        "projection_dim": 512,
    },
    "vit-b-32": {
        "text": dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                     num_attention_heads=8, max_position_embeddings=77),
        "vision": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                       num_attention_heads=12, image_size=224, patch_size=32),
        "projection_dim": 512,
    },
}

_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def _byte_level_vocab() -> dict[str, int]:
    """CLIP's byte-level alphabet, each symbol alone and word-final: a BPE with no merges."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols = [chr(b) for b in printable]
    symbols += [chr(256 + n) for n in range(256 - len(printable))]  # GPT-2's stand-ins for the other bytes
    tokens = symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    return {token: i for i, token in enumerate(tokens)}


def build_local_clip(out_dir: str | Path, architecture: str = "tiny", seed: int = 0) -> Path:
    """Write a random-weight CLIP to ``out_dir`` and return the directory."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Transformer
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor, CLIPTokenizer

    sizes = ARCHITECTURES[architecture]
    out = Path(out_dir)

    vocab = _byte_level_vocab()
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])
    tokenizer.model_max_length = sizes["text"]["max_position_embeddings"]
    image_size = sizes["vision"]["image_size"]
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        image_mean=_CLIP_MEAN,
        image_std=_CLIP_STD,
    )
    text_config = dict(sizes["text"], vocab_size=len(vocab),
                       bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
                       pad_token_id=vocab["<|endoftext|>"])
    config = CLIPConfig(text_config=text_config, vision_config=sizes["vision"],
                        projection_dim=sizes["projection_dim"])
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as raw:
        CLIPModel(config).save_pretrained(raw)
        CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(raw)
        SentenceTransformer(modules=[Transformer(raw)], device="cpu").save(str(out))
    return out
