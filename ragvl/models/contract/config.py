"""The Qwen2-VL architecture parameters, read from either config.json layout.

The hub's checkpoints were written by transformers 4.x and keep the text model's fields at the
top level (`rope_scaling: {"type": "mrope", ...}`); transformers 5 writes them nested under
`text_config` with `rope_parameters`. Both are normalised here into one frozen dataclass.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from ...errors import RagvlError

QWEN2VL_ARCHITECTURES = ("Qwen2VLForConditionalGeneration", "Qwen2VLModel")
COLQWEN2_ARCHITECTURES = ("ColQwen2",)


@dataclass(frozen=True)
class VisionConfig:
    depth: int
    embed_dim: int
    num_heads: int
    mlp_ratio: float
    in_channels: int
    patch_size: int
    temporal_patch_size: int
    spatial_merge_size: int
    hidden_size: int  # the merger's output width: the text model's hidden size
    hidden_act: str

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def mlp_hidden(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)

    @property
    def patch_dim(self) -> int:
        """Values in one flattened patch row: C * T * P * P (1176 for Qwen2-VL)."""
        return self.in_channels * self.temporal_patch_size * self.patch_size ** 2


@dataclass(frozen=True)
class TextConfig:
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    vocab_size: int
    rms_norm_eps: float
    rope_theta: float
    mrope_section: tuple[int, ...]
    hidden_act: str

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


@dataclass(frozen=True)
class Qwen2VLConfig:
    """Everything the converter and runtime need to know about one checkpoint's shapes."""

    architecture: str
    text: TextConfig
    vision: VisionConfig
    tie_word_embeddings: bool
    image_token_id: int
    video_token_id: int
    vision_start_token_id: int
    vision_end_token_id: int
    torch_dtype: str

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Qwen2VLConfig":
        text = TextConfig(**{**d["text"], "mrope_section": tuple(d["text"]["mrope_section"])})
        return cls(**{**d, "text": text, "vision": VisionConfig(**d["vision"])})


def read_config(folder: str | Path, allowed: tuple[str, ...] = QWEN2VL_ARCHITECTURES + COLQWEN2_ARCHITECTURES
                ) -> Qwen2VLConfig:
    """Parse `folder/config.json` (flat 4.x or nested 5.x layout) into a Qwen2VLConfig."""
    path = Path(folder) / "config.json"
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise RagvlError(f"{path}: missing (not a Hugging Face checkpoint folder?)") from None
    except (OSError, ValueError) as e:
        raise RagvlError(f"{path}: unreadable config ({e})") from None
    archs = raw.get("architectures") or []
    arch = archs[0] if archs else ""
    if arch not in allowed:
        model_type = raw.get("model_type", "?")
        raise RagvlError(f"{path}: architecture {arch or '?'} (model_type {model_type}) is not supported; "
                         f"expected one of {', '.join(allowed)}")
    try:
        return _parse(raw, arch)
    except (KeyError, TypeError, ValueError) as e:
        raise RagvlError(f"{path}: missing or invalid field {e}") from None


def _parse(raw: dict, arch: str) -> Qwen2VLConfig:
    t = raw.get("text_config") or raw  # nested (5.x) or flat (4.x)
    rope = t.get("rope_parameters") or t.get("rope_scaling") or raw.get("rope_scaling") or {}
    theta = rope.get("rope_theta", t.get("rope_theta", raw.get("rope_theta", 1_000_000.0)))
    mrope = tuple(int(x) for x in rope["mrope_section"])
    hidden = int(t["hidden_size"])
    heads = int(t["num_attention_heads"])
    text = TextConfig(
        hidden_size=hidden,
        num_hidden_layers=int(t["num_hidden_layers"]),
        num_attention_heads=heads,
        num_key_value_heads=int(t.get("num_key_value_heads", heads)),
        intermediate_size=int(t["intermediate_size"]),
        vocab_size=int(t["vocab_size"]),
        rms_norm_eps=float(t.get("rms_norm_eps", 1e-6)),
        rope_theta=float(theta),
        mrope_section=mrope,
        hidden_act=t.get("hidden_act", "silu"),
    )
    if text.hidden_act != "silu":
        raise ValueError(f"hidden_act={text.hidden_act!r} (only silu is supported)")
    if 2 * sum(mrope) != text.head_dim:
        raise ValueError(f"mrope_section={list(mrope)} (must sum to head_dim/2 = {text.head_dim // 2})")
    v = raw["vision_config"]
    vision = VisionConfig(
        depth=int(v["depth"]),
        embed_dim=int(v["embed_dim"]),
        num_heads=int(v["num_heads"]),
        mlp_ratio=float(v.get("mlp_ratio", 4)),
        in_channels=int(v.get("in_channels", v.get("in_chans", 3))),
        patch_size=int(v.get("patch_size", 14)),
        temporal_patch_size=int(v.get("temporal_patch_size", 2)),
        spatial_merge_size=int(v.get("spatial_merge_size", 2)),
        hidden_size=int(v.get("hidden_size", hidden)),
        hidden_act=v.get("hidden_act", "quick_gelu"),
    )
    if vision.hidden_act not in ("quick_gelu", "gelu"):
        raise ValueError(f"vision hidden_act={vision.hidden_act!r}")
    if vision.hidden_size != hidden:
        raise ValueError(f"vision_config.hidden_size={vision.hidden_size} (must equal the text hidden size {hidden})")
    tie = raw.get("tie_word_embeddings", t.get("tie_word_embeddings", False))
    return Qwen2VLConfig(
        architecture=arch,
        text=text,
        vision=vision,
        tie_word_embeddings=bool(tie),
        image_token_id=int(raw.get("image_token_id", 151655)),
        video_token_id=int(raw.get("video_token_id", 151656)),
        vision_start_token_id=int(raw.get("vision_start_token_id", 151652)),
        vision_end_token_id=int(raw.get("vision_end_token_id", 151653)),
        torch_dtype=str(raw.get("torch_dtype") or raw.get("dtype") or t.get("dtype") or "float32"),
    )
