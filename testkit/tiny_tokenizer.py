"""The tiny tokenizer of the test checkpoints: a byte-level BPE trained offline with the `tokenizers`
library, the Qwen2 special tokens, and Qwen2-VL-2B-Instruct's chat template. Torch-free; written
into every tiny checkpoint by testkit/tiny_hub.py (``build_tokenizer``).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

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


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
