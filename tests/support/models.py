"""Build random-weight models of each family imgsearch loads, laid out as the real ones are published.

Model weights cannot be downloaded everywhere imgsearch is developed, so tests and benchmarks make their own
models and load them through exactly the same code path as a real one:

- ``build_local_clip``: a CLIP in sentence-transformers format, as the sentence-transformers CLIP checkpoints
  (clip-ViT-B-32 ...). ``"tiny"`` is a model of a few hundred kilobytes for tests; ``"vit-b-32"`` and the other
  real sizes have the real architecture and therefore the real model's compute cost.
- ``build_local_hf_clip``: the same CLIP as a Hugging Face CLIP checkpoint is published (``CLIPModel`` and its
  processor, no modules.json): FashionCLIP, PLIP, StreetCLIP, CLIP-RSICD, PubmedCLIP.
- ``build_local_siglip``: a SigLIP or NaFlex SigLIP 2, as google/siglip-* and google/siglip2-* are published.
- ``build_local_text_tower``: a text model in sentence-transformers format made to meet a CLIP image tower, built
  as sentence-transformers/clip-ViT-B-32-multilingual-v1 is (DistilBERT, mean pooling, a projection).
- ``build_local_open_clip``: a tiny CLIP in open_clip's own layout (open_clip_config.json beside the weights), as
  BioCLIP is published; needs open_clip (the [openclip] extra).
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

# Sizes of the two towers. vit-b-32 matches openai/clip-vit-base-patch32.
ARCHITECTURES = {
    "tiny": {
        "text": dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=77
        ),
        "vision": dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        "projection_dim": 16,
    },
    # Small and quick, but with CLIP's 224-pixel input and 512-dimensional vectors: random vectors of this many
    # dimensions spread like a real model's, which the auto cutoff's tests need (the tiny model's 16 cannot).
    "small": {
        "text": dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=77,
        ),
        "vision": dict(
            hidden_size=128,
            intermediate_size=256,
            num_hidden_layers=4,
            num_attention_heads=4,
            image_size=224,
            patch_size=32,
        ),
        "projection_dim": 512,
    },
    "vit-b-32": {
        "text": dict(
            hidden_size=512,
            intermediate_size=2048,
            num_hidden_layers=12,
            num_attention_heads=8,
            max_position_embeddings=77,
        ),
        "vision": dict(
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            image_size=224,
            patch_size=32,
        ),
        "projection_dim": 512,
    },
    # The other sentence-transformers CLIP sizes, for timing them: openai/clip-vit-base-patch16, -large-patch14
    # and -large-patch14-336 (StreetCLIP's).
    "vit-b-16": {
        "text": dict(
            hidden_size=512,
            intermediate_size=2048,
            num_hidden_layers=12,
            num_attention_heads=8,
            max_position_embeddings=77,
        ),
        "vision": dict(
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            image_size=224,
            patch_size=16,
        ),
        "projection_dim": 512,
    },
    "vit-l-14": {
        "text": dict(
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            max_position_embeddings=77,
        ),
        "vision": dict(
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=24,
            num_attention_heads=16,
            image_size=224,
            patch_size=14,
        ),
        "projection_dim": 768,
    },
    "vit-l-14-336": {
        "text": dict(
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            max_position_embeddings=77,
        ),
        "vision": dict(
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=24,
            num_attention_heads=16,
            image_size=336,
            patch_size=14,
        ),
        "projection_dim": 768,
    },
}

_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
# SigLIP's towers (text and image alike) and its fixed input: "tiny" for tests, google/siglip-base-patch16-224's
# sizes for timing it. NaFlex SigLIP 2 takes 16-pixel patches whatever the size.
SIGLIP_SIZES = {
    "tiny": {
        "tower": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2),
        "image_size": 32,
        "patch_size": 8,
    },
    "base": {
        "tower": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12),
        "image_size": 224,
        "patch_size": 16,
    },
}
# The text model of a pair: "tiny" for tests, distilbert-base-multilingual-cased's sizes for timing it.
TEXT_TOWER_SIZES = {
    "tiny": dict(dim=32, hidden_dim=64, n_layers=2, n_heads=2),
    "distilbert-base": dict(dim=768, hidden_dim=3072, n_layers=6, n_heads=12),
}
SIGLIP_TEXT_TOKENS = 64  # the length SigLIP's texts were padded to in training
MULTILINGUAL_TEXT_TOKENS = 128  # clip-ViT-B-32-multilingual-v1's max_seq_length


def _byte_level_vocab() -> dict[str, int]:
    """CLIP's byte-level alphabet, each symbol alone and word-final: a BPE with no merges."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols = [chr(b) for b in printable]
    symbols += [chr(256 + n) for n in range(256 - len(printable))]  # GPT-2's stand-ins for the other bytes
    tokens = symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    return {token: i for i, token in enumerate(tokens)}


def build_local_clip(out_dir: str | Path, architecture: str = "tiny", seed: int = 0) -> Path:
    """Write a random-weight CLIP in sentence-transformers format to ``out_dir`` and return the directory."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Transformer

    out = Path(out_dir)
    with tempfile.TemporaryDirectory() as raw:
        build_local_hf_clip(raw, architecture, seed)
        SentenceTransformer(modules=[Transformer(raw)], device="cpu").save(str(out))
    return out


def build_local_hf_clip(out_dir: str | Path, architecture: str = "tiny", seed: int = 0) -> Path:
    """Write the CLIP of ``build_local_clip`` in Hugging Face's layout (``save_pretrained`` of the model and its
    processor) to ``out_dir`` and return the directory."""
    import torch
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
    text_config = dict(
        sizes["text"],
        vocab_size=len(vocab),
        bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"],
    )
    config = CLIPConfig(text_config=text_config, vision_config=sizes["vision"], projection_dim=sizes["projection_dim"])
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(out)
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)
    return out


def _siglip_tokenizer():
    """SigLIP 2's tokenizer (Gemma's BPE, lowercased) over a space, the letters and the 256 bytes, padding on the
    right as SigLIP was trained. The fixed-resolution SigLIP 2 checkpoints pair it with ``SiglipModel``; SigLIP
    1's own tokenizer is a sentencepiece model, which needs the sentencepiece package."""
    from transformers import Siglip2Tokenizer

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    symbols = ["▁", *[chr(c) for c in range(ord("a"), ord("z") + 1)], *[f"<0x{b:02X}>" for b in range(256)]]
    vocab = {token: i for i, token in enumerate(specials + symbols)}
    tokenizer = Siglip2Tokenizer(vocab=vocab, merges=[], padding_side="right")
    tokenizer.model_max_length = SIGLIP_TEXT_TOKENS
    return tokenizer


def build_local_siglip(out_dir: str | Path, seed: int = 0, version: int = 1, size: str = "tiny") -> Path:
    """Write a random-weight SigLIP of ``size`` (SIGLIP_SIZES) in Hugging Face's layout to ``out_dir`` and return
    the directory.

    ``version`` 1: ``SiglipModel``, a fixed square input (google/siglip-*, google/siglip2-*-224 ...). 2:
    ``Siglip2Model``, NaFlex SigLIP 2 (google/siglip2-*-naflex): an image keeps its aspect ratio in up to 256
    patches of 16 pixels, sizes its processor sets whatever the image processor says."""
    import torch
    from transformers import (
        Siglip2Config,
        Siglip2ImageProcessorPil,
        Siglip2Model,
        Siglip2Processor,
        Siglip2TextConfig,
        Siglip2VisionConfig,
        SiglipConfig,
        SiglipImageProcessorPil,
        SiglipModel,
        SiglipProcessor,
        SiglipTextConfig,
        SiglipVisionConfig,
    )

    out = Path(out_dir)
    tokenizer = _siglip_tokenizer()
    sizes = SIGLIP_SIZES[size]
    tower = sizes["tower"]
    text = dict(
        tower,
        vocab_size=len(tokenizer),
        max_position_embeddings=SIGLIP_TEXT_TOKENS,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    if version == 1:
        model = SiglipModel(
            SiglipConfig(
                text_config=SiglipTextConfig(**text),
                vision_config=SiglipVisionConfig(
                    **tower, image_size=sizes["image_size"], patch_size=sizes["patch_size"]
                ),
            )
        )
        image_processor = SiglipImageProcessorPil(size={"height": sizes["image_size"], "width": sizes["image_size"]})
        processor = SiglipProcessor(image_processor=image_processor, tokenizer=tokenizer)
    else:
        model = Siglip2Model(
            Siglip2Config(
                text_config=Siglip2TextConfig(**text),
                vision_config=Siglip2VisionConfig(**tower, patch_size=16, num_patches=256),
            )
        )
        image_processor = Siglip2ImageProcessorPil(patch_size=16, max_num_patches=256)
        processor = Siglip2Processor(image_processor=image_processor, tokenizer=tokenizer)
    with torch.no_grad():  # the SigLIP paper's starting temperature and bias, t' = log 10 and b = -10, not 0
        model.logit_scale.fill_(math.log(10))
        model.logit_bias.fill_(-10)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def build_local_text_tower(out_dir: str | Path, dim: int, seed: int = 0, size: str = "tiny") -> Path:
    """Write a random-weight text model of ``size`` (TEXT_TOWER_SIZES) giving ``dim``-dimensional vectors, in
    sentence-transformers format, to ``out_dir`` and return the directory: a cased DistilBERT whose WordPiece
    vocabulary is single characters (accented Latin ones too), mean pooling, and a projection without bias to
    ``dim``."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Dense, Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling
    from transformers import DistilBertConfig, DistilBertModel, DistilBertTokenizer

    out = Path(out_dir)
    characters = [
        chr(c) for c in [*range(ord("0"), ord("9") + 1), *range(ord("A"), ord("Z") + 1), *range(ord("a"), ord("z") + 1)]
    ] + list("àáâäçèéêëíîïñóôöúûüß")
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *characters, *[f"##{c}" for c in characters]]
    tokenizer = DistilBertTokenizer(vocab={token: i for i, token in enumerate(tokens)}, do_lower_case=False)
    config = DistilBertConfig(vocab_size=len(tokens), **TEXT_TOWER_SIZES[size])
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as raw:
        DistilBertModel(config).save_pretrained(raw)
        tokenizer.save_pretrained(raw)
        modules = [
            Transformer(raw, max_seq_length=MULTILINGUAL_TEXT_TOKENS),
            Pooling(config.dim, "mean"),
            Dense(config.dim, dim, bias=False, activation_function=torch.nn.Identity()),
        ]
        SentenceTransformer(modules=modules, device="cpu").save(str(out))
    return out


def build_local_open_clip(out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny random-weight open_clip CLIP to ``out_dir`` (open_clip_config.json and
    open_clip_model.safetensors, as on the hub) and return the directory. It keeps CLIP's tokenizer, which ships
    with open_clip, and so its 49,408-token vocabulary."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    out = Path(out_dir)
    model_cfg = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
    }
    torch.manual_seed(seed)
    model = open_clip.CLIP(**model_cfg)
    out.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": model_cfg, "preprocess_cfg": {"mean": _CLIP_MEAN, "std": _CLIP_STD}}
    (out / "open_clip_config.json").write_text(json.dumps(config, indent=2))
    save_file(
        {name: tensor.contiguous() for name, tensor in model.state_dict().items()},
        str(out / "open_clip_model.safetensors"),
    )
    return out
