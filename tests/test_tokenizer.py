"""ragvl.models.runtime.tokenizer against transformers' Qwen2VLProcessor on tiny hub-layout checkpoints.

Parity is exact: the rendered prompt string and the input ids / mm_token_type_ids must be equal.
"""

from __future__ import annotations

import json

import numpy as np
import PIL.Image
import pytest

from ragvl.errors import RagvlError
from ragvl.models.runtime.tokenizer import StreamDecoder, Tokenizer

import tiny_tokenizer as tc

# Tests comparing with transformers are marked `reference`; the rest need only the tokenizer files.

JAPANESE = "この画像を説明してください。東京タワーは３３３ｍです。鬱蒼とした森🌲、ｶﾞｷﾞ（半角）。"


def noise_image(h: int, w: int, seed: int = 0) -> PIL.Image.Image:
    rng = np.random.default_rng(seed)
    return PIL.Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def user(*items) -> dict:
    content = [{"type": "image"} if item is None else {"type": "text", "text": item} for item in items]
    return {"role": "user", "content": content}


CASES = {
    "one_image": ([user(None, "Describe the image.")], [(100, 150)], {}),
    "two_images": ([user(None, None, "Compare the two pages.")], [(56, 56), (90, 200)], {}),
    "two_images_vision_id": ([user(None, "and", None, "Which is larger?")], [(120, 80), (64, 64)], {"add_vision_id": True}),
    "text_only": ([user("Hello, who are you?")], [], {}),
    "text_only_string_content": ([{"role": "user", "content": "What is 2+2?"}], [], {}),
    "japanese": ([user(None, JAPANESE)], [(77, 133)], {}),
    # Decomposed kana (か + U+3099): both sides must apply tokenizer.json's NFC normalizer.
    "japanese_decomposed": ([user("か\u3099ぱ\u309a pa\u0301ge")], [], {}),
    "explicit_system": (
        [{"role": "system", "content": "答えは日本語で。Answer briefly."}, user(None, "What is on this page?")],
        [(60, 300)],
        {},
    ),
    "multi_turn": (
        [
            {"role": "system", "content": [{"type": "text", "text": "You are a careful reader."}]},
            user(None, "What is the title?"),
            {"role": "assistant", "content": [{"type": "text", "text": "The title is 東京タワー."}]},
            user("And the height?"),
            {"role": "assistant", "content": "333 m."},
            user(None, "Is this the same building?"),
        ],
        [(100, 100), (50, 140)],
        {},
    ),
}


@pytest.fixture(scope="module")
def hf_processor(tiny_ckpt_a):
    from tiny_checkpoints import make_hf_processor

    return make_hf_processor(tiny_ckpt_a)


@pytest.fixture
def make_tok_dir(tmp_path_factory):
    """Factory: a fresh folder with the tiny tokenizer's files (tiny_hub.build_tokenizer kwargs)."""
    return lambda **kwargs: tc.build_tokenizer(tmp_path_factory.mktemp("tok"), **kwargs)


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return Tokenizer.from_dir(tc.build_tokenizer(tmp_path_factory.mktemp("tok")))


@pytest.mark.reference
@pytest.mark.parametrize("case", sorted(CASES))
def test_prompt_ids_match_hf_processor(case, tok, hf_processor):
    messages, sizes, template_kwargs = CASES[case]
    images = [noise_image(h, w, seed=i) for i, (h, w) in enumerate(sizes)]

    text = tok.apply_chat_template(messages, add_generation_prompt=True, **template_kwargs)
    hf_text = hf_processor.apply_chat_template(
        json.loads(json.dumps(messages)), add_generation_prompt=True, **template_kwargs
    )
    assert text == hf_text

    hf = hf_processor(text=[hf_text], images=images or None)
    counts = [int(np.prod(g)) // 4 for g in hf["image_grid_thw"]] if images else []
    ids = tok.encode_prompt(text, counts)
    assert ids.dtype == np.int64
    np.testing.assert_array_equal(ids, np.asarray(hf["input_ids"][0]))
    np.testing.assert_array_equal(tok.mm_token_type_ids(ids), np.asarray(hf["mm_token_type_ids"][0]))
    assert int((ids == tok.image_pad_id).sum()) == sum(counts)
    # The template without the generation prompt also matches.
    assert tok.apply_chat_template(messages, add_generation_prompt=False, **template_kwargs) == (
        hf_processor.apply_chat_template(json.loads(json.dumps(messages)), add_generation_prompt=False, **template_kwargs)
    )


def test_expected_prompt_text(tok):
    text = tok.apply_chat_template(CASES["one_image"][0])
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Describe the image.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    ids = tok.encode_prompt(text, [5])
    assert int((ids == tok.image_pad_id).sum()) == 5
    pad = int(np.flatnonzero(ids == tok.image_pad_id)[0])
    assert ids[pad - 1] == tok.vision_start_id and ids[pad + 5] == tok.vision_end_id


def test_special_ids_come_from_the_vocab(tok):
    ids = tc.special_token_ids()
    assert tok.image_pad_id == ids["<|image_pad|>"]
    assert tok.video_pad_id == ids["<|video_pad|>"]
    assert tok.vision_start_id == ids["<|vision_start|>"] and tok.vision_end_id == ids["<|vision_end|>"]
    assert tok.eos_token_id == tok.im_end_id == ids["<|im_end|>"]
    assert tok.pad_token_id == tok.endoftext_id == ids["<|endoftext|>"]
    assert tok.vocab_size == tc.tokenizer_size()


def test_image_pad_count_mismatch_raises(tok):
    text = tok.apply_chat_template(CASES["two_images"][0])
    with pytest.raises(RagvlError, match="2 <\\|image_pad\\|> markers but 1 images"):
        tok.encode_prompt(text, [4])


# --- chat template locations -----------------------------------------------------------------


@pytest.mark.parametrize("location", ["tokenizer_config", "chat_template.json", "chat_template.jinja"])
def test_chat_template_from_each_location(location, make_tok_dir, tok):
    ckpt = make_tok_dir(chat_template_location=location)
    other = Tokenizer.from_dir(ckpt)
    assert other.chat_template == tc.QWEN2_VL_CHAT_TEMPLATE
    expected_file = "tokenizer_config.json" if location == "tokenizer_config" else location
    assert other.chat_template_path.name == expected_file
    for messages, _, kwargs in CASES.values():
        assert other.apply_chat_template(messages, **kwargs) == tok.apply_chat_template(messages, **kwargs)


@pytest.mark.reference
def test_chat_template_priority_follows_transformers(make_ckpt):
    """Where several files hold a template, pick what transformers 5.3 picks."""
    import transformers
    from tiny_checkpoints import make_hf_processor

    ckpt = make_ckpt(variant="a")  # template in tokenizer_config.json
    marked = {name: tc.QWEN2_VL_CHAT_TEMPLATE.replace("helpful", f"helpful[{name}]") for name in ("jinja", "json")}

    # chat_template.jinja beats tokenizer_config.json (the tokenizer's own loading).
    (ckpt / "chat_template.jinja").write_text(marked["jinja"], encoding="utf-8")
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(ckpt))
    assert hf_tok.chat_template == marked["jinja"]
    assert make_hf_processor(ckpt).chat_template == marked["jinja"]
    assert Tokenizer.from_dir(ckpt).chat_template == marked["jinja"]

    # chat_template.json beats chat_template.jinja (the processor reads the legacy file first).
    (ckpt / "chat_template.json").write_text(json.dumps({"chat_template": marked["json"]}), encoding="utf-8")
    assert make_hf_processor(ckpt).chat_template == marked["json"]
    assert Tokenizer.from_dir(ckpt).chat_template == marked["json"]


def test_chat_template_list_form(make_tok_dir):
    ckpt = make_tok_dir()
    cfg = json.loads((ckpt / "tokenizer_config.json").read_text())
    cfg["chat_template"] = [
        {"name": "tool_use", "template": "tools"},
        {"name": "default", "template": cfg["chat_template"]},
    ]
    (ckpt / "tokenizer_config.json").write_text(json.dumps(cfg))
    assert Tokenizer.from_dir(ckpt).chat_template == tc.QWEN2_VL_CHAT_TEMPLATE


def test_no_chat_template_raises_on_use(make_tok_dir):
    ckpt = make_tok_dir()
    cfg = json.loads((ckpt / "tokenizer_config.json").read_text())
    del cfg["chat_template"]
    (ckpt / "tokenizer_config.json").write_text(json.dumps(cfg))
    tok = Tokenizer.from_dir(ckpt)  # loads: retrieval models need no template
    with pytest.raises(RagvlError, match="no chat template"):
        tok.apply_chat_template(CASES["one_image"][0])


@pytest.mark.reference
def test_template_features_match_transformers(tok, hf_processor):
    """raise_exception, tojson (no HTML escaping, non-ASCII kept), loop controls, trim/lstrip blocks."""
    template = (
        "{% for m in messages %}{% if m['role'] == 'bad' %}{{ raise_exception('bad role') }}{% endif %}\n"
        "  {% if loop.index > 2 %}{% break %}{% endif %}{{ m | tojson }}\n{% endfor %}{{ eos_token }}"
    )
    messages = [{"role": "user", "content": "<b>東京</b> & 'x'"}, {"role": "assistant", "content": "ok"}, {"role": "user", "content": "z"}]
    custom = Tokenizer(tok.backend, template, {"eos_token": "<|im_end|>"})
    ours = custom.apply_chat_template(messages, add_generation_prompt=False)
    theirs = hf_processor.apply_chat_template(messages, chat_template=template, add_generation_prompt=False)
    assert ours == theirs and "東京" in ours and "<b>" in ours
    with pytest.raises(Exception, match="bad role"):
        custom.apply_chat_template([{"role": "bad", "content": ""}])


# --- streaming decode ------------------------------------------------------------------------


def stream(tok: Tokenizer, ids) -> list[str]:
    dec = StreamDecoder(tok)
    pieces = [dec.feed(int(i)) for i in ids]
    pieces.append(dec.flush())
    return pieces


def test_stream_decoder_japanese(tok):
    ids = tok.encode(JAPANESE + "\n" + JAPANESE[::-1])
    pieces = stream(tok, ids)
    assert not any("\ufffd" in p for p in pieces)
    assert "".join(pieces) == tok.decode(ids) == JAPANESE + "\n" + JAPANESE[::-1]
    # Characters really were split across tokens, and held back until complete.
    assert sum(p == "" for p in pieces[:-1]) >= 10


@pytest.mark.reference
def test_stream_decoder_matches_full_decode_on_arbitrary_ids(tok, hf_processor):
    """Random ids (specials, lone continuation bytes, ids past the tokenizer) still concatenate to
    the full decode, which equals transformers' decode."""
    rng = np.random.default_rng(0)
    for _ in range(50):
        ids = rng.integers(0, tok.vocab_size + 20, size=int(rng.integers(1, 40))).tolist()
        full = tok.decode(ids)
        assert "".join(stream(tok, ids)) == full
        assert hf_processor.tokenizer.decode(ids, skip_special_tokens=True) == full


def test_stream_decoder_skips_special_tokens(tok):
    ids = [tok.im_start_id, *tok.encode("答え: 42"), tok.im_end_id, tok.endoftext_id]
    pieces = stream(tok, ids)
    assert "".join(pieces) == "答え: 42"
    keep = StreamDecoder(tok, skip_special_tokens=False)
    text = "".join([keep.feed(i) for i in ids] + [keep.flush()])
    assert text == "<|im_start|>答え: 42<|im_end|><|endoftext|>"


# --- errors and import hygiene ---------------------------------------------------------------


def test_missing_tokenizer_json(tmp_path):
    with pytest.raises(RagvlError) as e:
        Tokenizer.from_dir(tmp_path)
    assert str(tmp_path / "tokenizer.json") in str(e.value) and "\n" not in str(e.value)


def test_unreadable_tokenizer_json(make_tok_dir):
    ckpt = make_tok_dir()
    (ckpt / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "Nope"}}')
    with pytest.raises(RagvlError) as e:
        Tokenizer.from_dir(ckpt)
    assert str(ckpt / "tokenizer.json") in str(e.value) and "\n" not in str(e.value)
    (ckpt / "tokenizer_config.json").write_text("{not json")
    (ckpt / "tokenizer.json").write_text(tc._tokenizer_json())
    with pytest.raises(RagvlError, match="tokenizer_config.json"):
        Tokenizer.from_dir(ckpt)
