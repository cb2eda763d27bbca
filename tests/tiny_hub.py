"""The torch-free parts of a tiny Qwen2-VL / ColQwen2 checkpoint in the Hugging Face hub layout.

Shared by the two weight builders: tests/tiny_numpy.py (numpy, no torch: the runtime-only test
suite) and tests/tiny_checkpoints.py + tests/tiny_colqwen2.py (torch + transformers, the reference
stack of the parity tests). Both write the same files around their weights:

- the tokenizer: a byte-level BPE trained here offline with the `tokenizers` library, with the
  Qwen2 special tokens, and Qwen2-VL-2B-Instruct's chat template (``build_tokenizer``);
- the shapes of the tiny variants (``TinySpec``, ``SPECS``);
- ``config.json`` in the flat hub layout (transformers 4.x) or the nested 5.3 layout,
  ``preprocessor_config.json``, ``generation_config.json``;
- safetensors files, single or sharded with ``model.safetensors.index.json`` (``write_safetensors``);
- ColQwen2's config files and key names, and PEFT LoRA adapter folders like vidore/colqwen2-v1.0
  (``write_lora_adapter``, given a normal sampler: numpy's or torch's).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
import shutil
from pathlib import Path
from typing import Any, Callable

# ---------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------

# Qwen2's special tokens, in the order the hub assigns their ids (151643 ... 151656). Here they are
# appended after the trained vocabulary, so they keep that relative order and sit at the end,
# like the hub's.
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# Qwen2's pre-tokenizer split regex (transformers/models/qwen2/tokenization_qwen2.py, and the hub's
# tokenizer.json). transformers 5.3's Qwen2Tokenizer rebuilds the backend from vocab+merges with
# exactly this pipeline, while ragvl reads tokenizer.json as is: writing the same pipeline into
# tokenizer.json keeps the two identical.
PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# Qwen/Qwen2-VL-2B-Instruct's chat template, verbatim from its tokenizer_config.json (the same
# string is in transformers' own tests/models/qwen2_vl/test_processing_qwen2_vl.py). Reconstructed
# from memory and checked character by character against several public copies of that file.
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# The built-in training text: English (including every word of the chat template's fixed text),
# Japanese (hiragana, katakana, kanji, full-width punctuation), digits and ASCII punctuation. Chars
# that do not occur here are still encodable (byte-level BPE) but split into 2-4 byte tokens,
# which is exactly what the streaming-decoder tests need.
_TRAINING_TEXT = """\
system
You are a helpful assistant.
user
assistant
Picture 1: Picture 2: Picture 3: Video 1:
Describe the image. What is shown in this picture? Describe this page in detail.
Answer the question using only the pages below. If the answer is not on the pages, say so.
The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a single step.
Retrieval-augmented generation finds the most relevant pages and lets the model read them.
Table 3 shows revenue of $1,234.56 (up 7.8%) for Q4 2023; see section 2.1, page 17.
Figures: 0 1 2 3 4 5 6 7 8 9 10 11 12 100 256 1024 2048 3.14159 -42 +7 1e-6 50% #1 @home
Punctuation: , . ; : ! ? ' " ( ) [ ] { } < > / \\ | - _ = + * & ^ % $ # @ ~ `
The invoice is due on 2024-03-31. Contact: info@example.com or https://example.com/docs?id=42.
こんにちは。今日はいい天気ですね。
これは日本語のテストです。東京は日本の首都です。
この画像を説明してください。このページには何が書かれていますか？
質問に答えてください。答えはページの中にあります。
私は学生です。図書館で本を読みます。駅まで歩いて十分です。
カタカナ：コンピュータ、データ、モデル、ページ、テキスト、イメージ。
数字：一、二、三、四、五、百、千、万。２０２４年３月３１日。
「検索拡張生成」は、関連するページを見つけてモデルに読ませます。
売上高は前年比７．８％増の１２３億円でした（第４四半期）。
Mixed: The page says 東京タワー is 333 m tall. 答え: 42.
"""

_BPE_VOCAB_SIZE = 640  # the trainer stops early on this small text; ~600 tokens + 14 specials


@functools.lru_cache(maxsize=None)
def _tokenizer_json() -> str:
    """Train the tiny byte-level BPE once per process and return its tokenizer.json text.

    Training is deterministic for a fixed text and trainer, so every checkpoint built in a
    session shares the same vocabulary.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer

    tok = Tokenizer(
        BPE(
            unk_token=None,
            continuing_subword_prefix="",
            end_of_word_suffix="",
            fuse_unk=False,
            byte_fallback=False,
        )
    )
    # The hub Qwen2 pipeline: NFC, regex split, byte-level mapping (no regex of its own).
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    trainer = BpeTrainer(
        vocab_size=_BPE_VOCAB_SIZE,
        min_frequency=1,
        show_progress=False,
        # All 256 byte symbols, so that any UTF-8 text is encodable.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tok.train_from_iterator(_TRAINING_TEXT.splitlines(keepends=True), trainer)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    return tok.to_str()


def special_token_ids() -> dict[str, int]:
    """Ids of the Qwen2 special tokens in the tiny tokenizer, e.g. {"<|image_pad|>": 618, ...}."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(_tokenizer_json())
    return {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}


def tokenizer_size() -> int:
    """Number of tokens in the tiny tokenizer, specials included."""
    from tokenizers import Tokenizer

    return Tokenizer.from_str(_tokenizer_json()).get_vocab_size(with_added_tokens=True)


def _tokenizer_config(include_chat_template: bool) -> dict[str, Any]:
    """tokenizer_config.json as Qwen/Qwen2-VL-2B-Instruct ships it, with this vocabulary's ids."""
    ids = special_token_ids()
    cfg: dict[str, Any] = {
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(ids[t]): {
                "content": t,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": True,
            }
            for t in SPECIAL_TOKENS
        },
        "additional_special_tokens": list(SPECIAL_TOKENS[1:]),
        "bos_token": None,
        "chat_template": QWEN2_VL_CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "padding_side": "left",
        "errors": "replace",
        "model_max_length": 32768,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
    if not include_chat_template:
        del cfg["chat_template"]
    return cfg


def build_tokenizer(out_dir: str | Path, chat_template_location: str = "tokenizer_config") -> Path:
    """Write tokenizer.json, tokenizer_config.json and the chat template into `out_dir`.

    chat_template_location: "tokenizer_config" (inside tokenizer_config.json, as on the hub),
    "chat_template.json" ({"chat_template": ...}, the processor's legacy file) or
    "chat_template.jinja" (the raw file transformers 5.x writes).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if chat_template_location not in ("tokenizer_config", "chat_template.json", "chat_template.jinja"):
        raise ValueError(f"unknown chat_template_location {chat_template_location!r}")
    (out / "tokenizer.json").write_text(_tokenizer_json(), encoding="utf-8")
    in_config = chat_template_location == "tokenizer_config"
    _write_json(out / "tokenizer_config.json", _tokenizer_config(include_chat_template=in_config))
    if chat_template_location == "chat_template.json":
        _write_json(out / "chat_template.json", {"chat_template": QWEN2_VL_CHAT_TEMPLATE})
    elif chat_template_location == "chat_template.jinja":
        (out / "chat_template.jinja").write_text(QWEN2_VL_CHAT_TEMPLATE, encoding="utf-8")
    return out


# ---------------------------------------------------------------------------------------------
# Model specs
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TinySpec:
    """Shape of one tiny Qwen2-VL variant. head_dim = hidden_size / num_heads for both towers."""

    name: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    mrope_section: tuple[int, int, int]  # sums to text head_dim / 2
    vision_depth: int
    vision_embed_dim: int
    vision_num_heads: int
    vision_mlp_ratio: int
    tie_word_embeddings: bool
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    # Large, so logits are peaked and greedy comparisons do not hinge on near-ties.
    initializer_range: float = 0.2
    # The hub pads the embedding matrix past the tokenizer (151936 rows for 151657 tokens);
    # rounding up to a multiple of this reproduces that, so a runtime cannot confuse the two sizes.
    vocab_multiple: int = 64
    max_position_embeddings: int = 32768

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def vocab_size(self) -> int:
        n = tokenizer_size()
        return int(math.ceil(n / self.vocab_multiple) * self.vocab_multiple)


SPECS: dict[str, TinySpec] = {
    # GQA with 2 query heads per KV head; tied lm_head like Qwen2-VL-2B.
    "a": TinySpec(
        name="a",
        hidden_size=64,
        intermediate_size=128,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        mrope_section=(2, 3, 3),
        vision_depth=2,
        vision_embed_dim=32,
        vision_num_heads=4,  # vision head_dim 8
        vision_mlp_ratio=4,
        tie_word_embeddings=True,
    ),
    # 6 query heads on 1 KV head (the 2B's group size of 6); untied lm_head like Qwen2-VL-7B.
    "b": TinySpec(
        name="b",
        hidden_size=96,
        intermediate_size=200,
        num_layers=3,
        num_heads=6,
        num_kv_heads=1,
        mrope_section=(4, 2, 2),
        vision_depth=3,
        vision_embed_dim=48,
        vision_num_heads=3,  # vision head_dim 16
        vision_mlp_ratio=2,
        tie_word_embeddings=False,
    ),
}

for _s in SPECS.values():
    assert sum(_s.mrope_section) * 2 == _s.head_dim, _s
    assert (_s.vision_embed_dim // _s.vision_num_heads) % 4 == 0, _s


def _spec(variant: str | TinySpec) -> TinySpec:
    if isinstance(variant, TinySpec):
        return variant
    try:
        return SPECS[variant]
    except KeyError:
        raise ValueError(f"unknown tiny variant {variant!r}; known: {sorted(SPECS)}") from None


# ---------------------------------------------------------------------------------------------
# Config files
# ---------------------------------------------------------------------------------------------

_DTYPES = ("float32", "bfloat16", "float16")


def nested_config(spec: TinySpec, dtype: str = "float32") -> dict[str, Any]:
    """config.json in the layout transformers 5.3's save_pretrained writes (text_config, rope_parameters)."""
    ids = special_token_ids()
    return {
        "architectures": ["Qwen2VLForConditionalGeneration"],
        "dtype": dtype,
        "image_token_id": ids["<|image_pad|>"],
        "model_type": "qwen2_vl",
        "text_config": {
            "attention_dropout": 0.0,
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "hidden_act": "silu",
            "hidden_size": spec.hidden_size,
            "initializer_range": spec.initializer_range,
            "intermediate_size": spec.intermediate_size,
            "layer_types": ["full_attention"] * spec.num_layers,
            "max_position_embeddings": spec.max_position_embeddings,
            "max_window_layers": spec.num_layers,
            "model_type": "qwen2_vl_text",
            "num_attention_heads": spec.num_heads,
            "num_hidden_layers": spec.num_layers,
            "num_key_value_heads": spec.num_kv_heads,
            "pad_token_id": ids["<|endoftext|>"],
            "rms_norm_eps": spec.rms_norm_eps,
            "rope_parameters": {
                "mrope_section": list(spec.mrope_section),
                "rope_theta": spec.rope_theta,
                "rope_type": "default",
            },
            "sliding_window": None,
            "use_cache": True,
            "use_sliding_window": False,
            "vocab_size": spec.vocab_size,
        },
        "tie_word_embeddings": spec.tie_word_embeddings,
        "transformers_version": "5.3.0",
        "video_token_id": ids["<|video_pad|>"],
        "vision_config": {
            "depth": spec.vision_depth,
            "embed_dim": spec.vision_embed_dim,
            "hidden_act": "quick_gelu",
            "hidden_size": spec.hidden_size,  # the merger's output feeds the text model
            "in_channels": 3,
            "initializer_range": spec.initializer_range,
            "mlp_ratio": spec.vision_mlp_ratio,
            "model_type": "qwen2_vl",
            "num_heads": spec.vision_num_heads,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        "vision_end_token_id": ids["<|vision_end|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
    }


def flat_config(spec: TinySpec, dtype: str = "float32") -> dict[str, Any]:
    """config.json in the flat transformers-4.x layout of the hub's Qwen2-VL-2B-Instruct.

    Same field set as the hub file: text fields at top level, `rope_scaling` with type "mrope",
    `vision_config` using `in_chans`; no pad_token_id (the hub config has none).
    """
    ids = special_token_ids()
    return {
        "architectures": ["Qwen2VLForConditionalGeneration"],
        "attention_dropout": 0.0,
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
        "vision_token_id": ids["<|vision_pad|>"],
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "hidden_act": "silu",
        "hidden_size": spec.hidden_size,
        "initializer_range": spec.initializer_range,
        "intermediate_size": spec.intermediate_size,
        "max_position_embeddings": spec.max_position_embeddings,
        "max_window_layers": spec.num_layers,
        "model_type": "qwen2_vl",
        "num_attention_heads": spec.num_heads,
        "num_hidden_layers": spec.num_layers,
        "num_key_value_heads": spec.num_kv_heads,
        "rms_norm_eps": spec.rms_norm_eps,
        "rope_theta": spec.rope_theta,
        "sliding_window": spec.max_position_embeddings,
        "tie_word_embeddings": spec.tie_word_embeddings,
        "torch_dtype": dtype,
        "transformers_version": "4.41.2",
        "use_cache": True,
        "use_sliding_window": False,
        "vision_config": {
            "depth": spec.vision_depth,
            "embed_dim": spec.vision_embed_dim,
            "mlp_ratio": spec.vision_mlp_ratio,
            "num_heads": spec.vision_num_heads,
            "in_chans": 3,
            "hidden_size": spec.hidden_size,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "hidden_act": "quick_gelu",
        },
        "rope_scaling": {"type": "mrope", "mrope_section": list(spec.mrope_section)},
        "vocab_size": spec.vocab_size,
    }


# Tiny checkpoints cap images at 64 merged tokens (8x8 merge windows) to keep tests fast.
TINY_MAX_PIXELS = 28 * 28 * 64
HUB_MIN_PIXELS = 3136
HUB_MAX_PIXELS = 12845056


def preprocessor_config(min_pixels: int = HUB_MIN_PIXELS, max_pixels: int = TINY_MAX_PIXELS) -> dict[str, Any]:
    """preprocessor_config.json in the hub's Qwen2-VL style (min/max_pixels, not `size`)."""
    return {
        "min_pixels": min_pixels,
        "max_pixels": max_pixels,
        "patch_size": 14,
        "temporal_patch_size": 2,
        "merge_size": 2,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "image_processor_type": "Qwen2VLImageProcessor",
        "processor_class": "Qwen2VLProcessor",
    }


def generation_config(kind: str = "hub") -> dict[str, Any]:
    """generation_config.json. "hub": Qwen2-VL-Instruct's (sampling flags that amount to greedy);
    "greedy": plain do_sample=False."""
    ids = special_token_ids()
    base = {
        "bos_token_id": ids["<|endoftext|>"],
        "pad_token_id": ids["<|endoftext|>"],
        "eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]],
    }
    if kind == "hub":
        return {
            **base,
            "do_sample": True,
            "repetition_penalty": 1.0,
            "temperature": 0.01,
            "top_p": 0.001,
            "top_k": 1,
            "transformers_version": "4.37.0",
        }
    if kind == "greedy":
        return {**base, "do_sample": False, "transformers_version": "5.3.0"}
    raise ValueError(f"unknown generation config kind {kind!r}")


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")



def write_safetensors(
    out: Path, tensors: dict[str, Any], *, sharded: bool, num_shards: int, save_file: Callable, meta: dict
) -> None:
    """Write `tensors` (numpy arrays or torch tensors, by hub name) into `out` as model.safetensors,
    or, when `sharded`, as `num_shards` shards plus model.safetensors.index.json.

    save_file: safetensors.numpy.save_file or safetensors.torch.save_file; meta: the file metadata
    ({"format": "pt"} is what transformers writes and looks for).
    """
    names = sorted(tensors)
    if not sharded:
        save_file({k: tensors[k] for k in names}, str(out / "model.safetensors"), metadata=meta)
        return
    # Balance shards by bytes, keeping the sorted key order (like transformers' max_shard_size
    # splitting, but with a fixed shard count so tiny models still get >= 2 shards).
    sizes = {k: int(tensors[k].nbytes) for k in names}
    total = sum(sizes.values())
    target = total / num_shards
    shards: list[list[str]] = [[]]
    acc = 0
    for k in names:
        if acc >= target * len(shards) and len(shards) < num_shards:
            shards.append([])
        shards[-1].append(k)
        acc += sizes[k]
    assert len(shards) == num_shards and all(shards), "too few tensors to shard"
    weight_map = {}
    for i, keys in enumerate(shards, start=1):
        fname = f"model-{i:05d}-of-{num_shards:05d}.safetensors"
        save_file({k: tensors[k] for k in keys}, str(out / fname), metadata=meta)
        weight_map.update({k: fname for k in keys})
    _write_json(
        out / "model.safetensors.index.json",
        {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))},
    )


# ---------------------------------------------------------------------------------------------
# ColQwen2
# ---------------------------------------------------------------------------------------------

EMBED_DIM = 128  # ColQwen2.dim: custom_text_proj's output width


def colqwen2_config(spec: TinySpec, layout: str = "nested", dtype: str = "float32") -> dict[str, Any]:
    """config.json of a ColQwen2 checkpoint: the Qwen2-VL config with architectures ["ColQwen2"].

    "flat" is what vidore/colqwen2-base / -v1.0-merged ship (written by transformers 4.x);
    "nested" is what transformers 5.3 writes. model_type stays "qwen2_vl".
    """
    if layout == "nested":
        cfg = nested_config(spec, dtype)
    elif layout == "flat":
        cfg = flat_config(spec, dtype)
    else:
        raise ValueError(f"unknown layout {layout!r}")
    cfg["architectures"] = ["ColQwen2"]
    return cfg


def colqwen2_preprocessor_config(min_pixels: int = HUB_MIN_PIXELS, max_pixels: int = TINY_MAX_PIXELS) -> dict:
    """preprocessor_config.json as the ColQwen2 hub repos ship it (Qwen2-VL's, saved by ColQwen2Processor).

    The hub file keeps Qwen2-VL's max_pixels (12845056); training capped pages at 768 visual tokens
    (602112 pixels) through ColQwen2Processor(max_num_visual_tokens=768). Tests use a small cap.
    """
    cfg = preprocessor_config(min_pixels, max_pixels)
    cfg["processor_class"] = "ColQwen2Processor"
    return cfg


# ---------------------------------------------------------------------------------------------
# ColQwen2 names and LoRA adapters
# ---------------------------------------------------------------------------------------------

# LoRA target regex of colpali's scripts/configs/qwen2/train_colqwen2_model.yaml (the recipe of
# vidore/colqwen2-v1.0): every linear layer of the language model plus custom_text_proj, nothing
# in the vision tower (its module names contain no "model"). PEFT matches it with re.fullmatch
# against the module names of the model it wraps; under transformers 5.3 those are
# "language_model.layers.N.self_attn.q_proj" ... and "custom_text_proj", both matched.
COLQWEN2_LORA_TARGET_MODULES = (
    r"(.*(model).*(down_proj|gate_proj|up_proj|k_proj|q_proj|v_proj|o_proj).*$|.*(custom_text_proj).*$)"
)

CUSTOM_TEXT_PROJ_PREFIX = "base_model.model."

# Processor files copied from the base checkpoint into an adapter folder (vidore/colqwen2-v1.0
# ships its processor files next to the adapter, so ColQwen2Processor.from_pretrained(adapter) works).
PROCESSOR_FILES = ("preprocessor_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def hub_to_model_name(key: str) -> str:
    """Map a hub checkpoint key to the ColQwen2 (transformers 5.3) parameter name, as colpali-engine does.

    "model.X" -> "language_model.X"; "base_model.model.custom_text_proj.*" -> "custom_text_proj.*";
    "visual.*" and "custom_text_proj.*" unchanged.
    """
    if key.startswith(CUSTOM_TEXT_PROJ_PREFIX + "custom_text_proj."):
        return key[len(CUSTOM_TEXT_PROJ_PREFIX) :]
    if key.startswith("model."):
        return "language_model." + key[len("model.") :]
    if key.startswith(("visual.", "custom_text_proj.", "language_model.")):
        return key  # "language_model.*": transformers-5 names (peft 0.20 adapters), already model names
    raise ValueError(f"not a loadable ColQwen2 hub key: {key}")


def model_to_hub_name(name: str) -> str:
    """Inverse of hub_to_model_name (unprefixed hub names): "language_model.X" -> "model.X"."""
    if name.startswith("language_model."):
        return "model." + name[len("language_model.") :]
    return name


def stored_shapes(ckpt_dir: str | Path) -> dict[str, tuple[int, ...]]:
    """{key: shape} of every tensor in a checkpoint folder's *.safetensors, from the file headers."""
    out = {}
    for f in sorted(Path(ckpt_dir).glob("*.safetensors")):
        with f.open("rb") as fh:
            header = json.loads(fh.read(int.from_bytes(fh.read(8), "little")))
        out.update({k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"})
    return out


def _targets_module(name: str, target_modules: str | list[str] | tuple[str, ...]) -> bool:
    """PEFT's target matching (peft.tuners.tuners_utils.check_target_module_exists): a string is
    re.fullmatch-ed against the module name, a list matches a name equal to or ending in ".t"."""
    if isinstance(target_modules, str):
        return re.fullmatch(target_modules, name) is not None
    return any(name == t or name.endswith("." + t) for t in target_modules)


def lora_targets(base_dir: str | Path, target_modules=COLQWEN2_LORA_TARGET_MODULES) -> dict[str, tuple[int, int]]:
    """{ColQwen2 (transformers 5.3) module name: (out_features, in_features)} of the Linear layers
    of the base checkpoint that PEFT would wrap for `target_modules`."""
    out: dict[str, tuple[int, int]] = {}
    for key, shape in stored_shapes(base_dir).items():
        name = hub_to_model_name(key)
        if not name.endswith(".weight") or len(shape) != 2:
            continue
        module = name[: -len(".weight")]
        if not _targets_module(module, target_modules):
            continue
        if module.endswith("embed_tokens"):
            raise ValueError("embedding LoRA (lora_embedding_A/B) is not supported by this builder")
        out[module] = (int(shape[0]), int(shape[1]))
    if not out:
        raise ValueError(f"target_modules {target_modules!r} matches no Linear layer")
    return dict(sorted(out.items()))


def adapter_key(module: str, which: str, key_layout: str = "hub") -> str:
    """adapter_model.safetensors key of `module`'s lora_A / lora_B weight.

    key_layout "hub": what vidore/colqwen2-v1.0 holds (PEFT + transformers 4.x module names), e.g.
    "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
    "base_model.model.custom_text_proj.lora_B.weight".
    key_layout "transformers5": what peft 0.20 save_pretrained writes under transformers 5.3,
    e.g. "base_model.model.language_model.layers.0.self_attn.q_proj.lora_A.weight".
    """
    if which not in ("lora_A", "lora_B"):
        raise ValueError(which)
    if key_layout == "hub":
        module = model_to_hub_name(module)
    elif key_layout != "transformers5":
        raise ValueError(f"unknown key_layout {key_layout!r}")
    return f"base_model.model.{module}.{which}.weight"


def write_lora_adapter(
    base_dir: str | Path,
    adapter_dir: str | Path,
    *,
    randn: Callable[[tuple[int, ...]], Any],
    save_file: Callable,
    r: int = 4,
    target_modules: str | list[str] = COLQWEN2_LORA_TARGET_MODULES,
    lora_alpha: int | None = None,
    lora_dropout: float = 0.1,
    key_layout: str = "hub",
    base_model_name_or_path: str | None = None,
    a_std: float = 0.2,
    b_std: float = 0.1,
) -> Path:
    """Write a PEFT LoRA adapter folder over the merged-layout checkpoint `base_dir` and return its path.

    Modelled on vidore/colqwen2-v1.0 (colpali's train_colqwen2_model.yaml: r 32, lora_alpha 32,
    lora_dropout 0.1, init_lora_weights "gaussian", bias "none", task_type "FEATURE_EXTRACTION",
    target_modules = COLQWEN2_LORA_TARGET_MODULES, modules_to_save null). custom_text_proj is a
    LoRA *target* there (ManuelFay, colpali issue #156: "we do LORAs for everything"), not a
    modules_to_save entry, so the adapter holds base_model.model.custom_text_proj.lora_A/B and the
    merge changes custom_text_proj.weight but never its bias.

    Differences for tests: r defaults to 4 and lora_alpha to 2 * r (scaling 2, not 1, so a merge
    that forgets alpha / r is caught); lora_B is random (a_std, b_std), not zero, so merging
    matters. Written by hand, not by peft's save_pretrained: under transformers 5.3 that writes
    "base_model.model.language_model.layers..." (key_layout="transformers5"), while the hub adapter
    was saved under transformers 4.x as "base_model.model.model.layers..." (key_layout="hub",
    default). peft 0.20 loads both into a transformers-5.3 ColQwen2 (it remaps with the model's
    _checkpoint_conversion_mapping after stripping "base_model.model.").

    The processor files of `base_dir` are copied too (the hub adapter repo ships them).
    randn(shape) draws standard normal weights (numpy or torch, in call order: lora_A then lora_B
    of each target, sorted by name); save_file is safetensors.numpy's or safetensors.torch's.
    """
    base = Path(base_dir)
    out = Path(adapter_dir)
    out.mkdir(parents=True, exist_ok=True)
    alpha = 2 * r if lora_alpha is None else lora_alpha

    tensors = {}
    for module, (n_out, n_in) in lora_targets(base, target_modules).items():
        tensors[adapter_key(module, "lora_A", key_layout)] = a_std * randn((r, n_in))
        tensors[adapter_key(module, "lora_B", key_layout)] = b_std * randn((n_out, r))
    save_file(dict(sorted(tensors.items())), str(out / "adapter_model.safetensors"), metadata={"format": "pt"})

    # Field set of a peft 0.1x adapter_config.json, like the hub's.
    _write_json(
        out / "adapter_config.json",
        {
            "alpha_pattern": {},
            "auto_mapping": None,
            "base_model_name_or_path": base_model_name_or_path or str(base),
            "bias": "none",
            "fan_in_fan_out": False,
            "inference_mode": False,
            "init_lora_weights": "gaussian",
            "layer_replication": None,
            "layers_pattern": None,
            "layers_to_transform": None,
            "loftq_config": {},
            "lora_alpha": alpha,
            "lora_dropout": lora_dropout,
            "megatron_config": None,
            "megatron_core": "megatron.core",
            "modules_to_save": None,
            "peft_type": "LORA",
            "r": r,
            "rank_pattern": {},
            "revision": None,
            "target_modules": target_modules if isinstance(target_modules, str) else list(target_modules),
            "task_type": "FEATURE_EXTRACTION",
            "use_dora": False,
            "use_rslora": False,
        },
    )
    for f in PROCESSOR_FILES:
        if (base / f).exists():
            shutil.copyfile(base / f, out / f)
    return out
