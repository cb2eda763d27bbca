"""The tiny-checkpoint harness itself: hub layout on disk, HF loads every variant to the same
weights, HF greedy generation over an image prompt, and the offline tokenizer."""

from __future__ import annotations

import json

import numpy as np
import PIL.Image
import pytest

# Parity tests only (the reference stack). Without torch the names stay None and every test here
# is deselected (-m "not reference") or skipped by conftest with the reason.
pytestmark = pytest.mark.reference
try:
    import torch
    import transformers
except ImportError:
    torch = transformers = None

import tiny_checkpoints as tc  # noqa: E402

IMAGE_PROMPT = [
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image."}]}
]
EXPECTED_IMAGE_PROMPT = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Describe the image.<|im_end|>\n"
    "<|im_start|>assistant\n"
)
JAPANESE = "この画像を説明してください。東京タワーは３３３ｍです。鬱蒼とした森🌲、ｶﾞｷﾞ（半角）。"


def noise_image(h: int, w: int, seed: int = 0) -> PIL.Image.Image:
    rng = np.random.default_rng(seed)
    return PIL.Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def reference_weights(variant: str, dtype: str, seed: int = 0) -> dict:
    """The builder's weights as they should come back from disk: stored dtype, then fp32."""
    model = tc.build_hf_model(variant, seed=seed)
    return {k: v.to(getattr(torch, dtype)).float() for k, v in model.state_dict().items()}


# --- layout on disk --------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["a", "b"])
def test_saved_keys_are_hub_names_and_match_save_pretrained(variant, make_ckpt, tmp_path):
    ckpt = make_ckpt(variant=variant)
    ours = tc.read_hub_tensors(ckpt)
    spec = tc.SPECS[variant]
    # Hub names only: visual.*, model.embed_tokens / layers / norm, lm_head only when untied.
    other = sorted(k for k in ours if not k.startswith(("visual.", "model.layers.")))
    expected_other = ["model.embed_tokens.weight", "model.norm.weight"]
    if not spec.tie_word_embeddings:
        expected_other = ["lm_head.weight"] + expected_other
    assert other == expected_other
    assert not any("language_model" in k for k in ours)
    assert sum(k.startswith("model.layers.") and k.endswith("q_proj.bias") for k in ours) == spec.num_layers
    assert sum(k.startswith("visual.blocks.") and k.endswith("attn.qkv.weight") for k in ours) == spec.vision_depth

    # transformers 5.3's own save_pretrained writes the same names (its conversion mapping is
    # reverted on save) and the same tensors.
    model = tc.build_hf_model(variant)
    model.save_pretrained(tmp_path / "hf")
    theirs = tc.read_hub_tensors(tmp_path / "hf")
    assert sorted(theirs) == sorted(ours)
    for k in ours:
        assert torch.equal(theirs[k], ours[k]), k


def test_sharded_index_is_hub_like(make_ckpt):
    ckpt = make_ckpt(variant="b", sharded=True, num_shards=3)
    index = json.loads((ckpt / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert files == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    assert not (ckpt / "model.safetensors").exists()
    tensors = tc.read_hub_tensors(ckpt)
    assert sorted(index["weight_map"]) == sorted(tensors)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in tensors.values())


def test_flat_config_is_hub_layout(make_ckpt):
    cfg = json.loads((make_ckpt(variant="a", layout="flat", dtype="bfloat16") / "config.json").read_text())
    assert "text_config" not in cfg and "rope_parameters" not in cfg
    assert cfg["rope_scaling"] == {"type": "mrope", "mrope_section": [2, 3, 3]}
    assert cfg["torch_dtype"] == "bfloat16" and cfg["hidden_size"] == 64 and cfg["num_hidden_layers"] == 2
    v = cfg["vision_config"]
    assert (v["depth"], v["embed_dim"], v["num_heads"], v["in_chans"], v["hidden_size"]) == (2, 32, 4, 3, 64)
    assert v["hidden_act"] == "quick_gelu"
    nested = json.loads((make_ckpt(variant="a") / "config.json").read_text())
    assert nested["text_config"]["rope_parameters"]["mrope_section"] == [2, 3, 3]


def test_side_files(make_ckpt):
    ckpt = make_ckpt(variant="a", max_pixels=28 * 28 * 16, generation="greedy")
    pre = json.loads((ckpt / "preprocessor_config.json").read_text())
    assert (pre["min_pixels"], pre["max_pixels"], pre["merge_size"]) == (3136, 28 * 28 * 16, 2)
    gen = json.loads((ckpt / "generation_config.json").read_text())
    assert gen["do_sample"] is False
    ids = tc.special_token_ids()
    hub = tc.generation_config("hub")
    assert hub["eos_token_id"] == [ids["<|im_end|>"], ids["<|endoftext|>"]] and hub["top_k"] == 1
    tok_cfg = json.loads((ckpt / "tokenizer_config.json").read_text())
    assert tok_cfg["chat_template"] == tc.QWEN2_VL_CHAT_TEMPLATE
    assert tok_cfg["eos_token"] == "<|im_end|>" and tok_cfg["tokenizer_class"] == "Qwen2Tokenizer"
    # Special tokens sit after the trained vocab, in the hub's order.
    assert list(ids.values()) == list(range(ids["<|endoftext|>"], ids["<|endoftext|>"] + len(tc.SPECIAL_TOKENS)))


def test_builds_are_deterministic(make_ckpt):
    one = make_ckpt(variant="b", sharded=True, dtype="bfloat16")
    two = make_ckpt(variant="b", sharded=True, dtype="bfloat16")
    for f in sorted(p.name for p in one.iterdir()):
        assert (one / f).read_bytes() == (two / f).read_bytes(), f
    other_seed = tc.read_hub_tensors(make_ckpt(variant="b", seed=1))
    assert not torch.equal(other_seed["model.norm.weight"], tc.read_hub_tensors(one)["model.norm.weight"].float())


# --- HF loads every layout to the same model ---------------------------------------------------

LOAD_CASES = [
    ("nested", False, "float32"),
    ("flat", False, "float32"),
    ("nested", True, "float32"),
    ("flat", True, "bfloat16"),
    ("nested", False, "bfloat16"),
    ("flat", False, "float16"),
]


@pytest.mark.parametrize("variant", ["a", "b"])
@pytest.mark.parametrize("layout,sharded,dtype", LOAD_CASES)
def test_hf_loads_identical_weights(variant, layout, sharded, dtype, make_ckpt):
    ckpt = make_ckpt(variant=variant, layout=layout, sharded=sharded, dtype=dtype)
    model = tc.load_hf_model(ckpt)
    spec = tc.SPECS[variant]
    got = model.state_dict()
    want = reference_weights(variant, dtype)
    assert sorted(got) == sorted(want)
    for k, v in want.items():
        assert got[k].dtype == torch.float32
        assert torch.equal(got[k], v), k
    # Config semantics survive both layouts.
    text = model.config.text_config
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads, text.num_key_value_heads) == (
        spec.hidden_size,
        spec.num_layers,
        spec.num_heads,
        spec.num_kv_heads,
    )
    assert text.rope_parameters["mrope_section"] == list(spec.mrope_section)
    assert text.rope_parameters["rope_theta"] == spec.rope_theta
    assert model.config.vision_config.depth == spec.vision_depth
    assert model.config.vision_config.hidden_size == spec.hidden_size
    assert model.config.image_token_id == tc.special_token_ids()["<|image_pad|>"]
    tied = model.lm_head.weight.data_ptr() == model.model.language_model.embed_tokens.weight.data_ptr()
    assert tied == spec.tie_word_embeddings


# --- HF generation ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_a(tiny_ckpt_a):
    return tc.load_hf_model(tiny_ckpt_a), tc.make_hf_processor(tiny_ckpt_a)


@pytest.mark.parametrize("variant", ["a", "b"])
def test_hf_generate_image_prompt(variant, tiny_ckpt_a, tiny_ckpt_b):
    ckpt = {"a": tiny_ckpt_a, "b": tiny_ckpt_b}[variant]
    model, processor = tc.load_hf_model(ckpt), tc.make_hf_processor(ckpt)
    image = noise_image(100, 150)
    ref = tc.hf_generate(model, processor, IMAGE_PROMPT, [image], max_new_tokens=32)
    assert ref["text"] == EXPECTED_IMAGE_PROMPT
    assert ref["new_token_ids"].shape == (32,)
    assert ref["new_token_ids"].max() < tc.SPECS[variant].vocab_size
    assert ref["first_logits"].shape == (tc.SPECS[variant].vocab_size,)
    # 100x150 -> smart_resize 112x140 -> 8x10 patches -> 20 merged tokens.
    assert ref["image_grid_thw"].tolist() == [[1, 8, 10]]
    ids = tc.special_token_ids()
    n_pad = int((ref["prompt_ids"] == ids["<|image_pad|>"]).sum())
    assert n_pad == 20 and ref["mm_token_type_ids"].sum() == 20
    assert ref["pixel_values"].shape == (80, 3 * 2 * 14 * 14)
    assert ref["min_logit_margin"] > 0
    # Deterministic, and the image matters.
    again = tc.hf_generate(model, processor, IMAGE_PROMPT, [image], max_new_tokens=32)
    np.testing.assert_array_equal(again["new_token_ids"], ref["new_token_ids"])
    other = tc.hf_generate(model, processor, IMAGE_PROMPT, [noise_image(100, 150, seed=1)], max_new_tokens=8)
    assert not np.array_equal(other["first_logits"], ref["first_logits"])


def test_hf_generate_eos_handling(hf_a):
    model, processor = hf_a
    free = tc.hf_generate(model, processor, IMAGE_PROMPT, [noise_image(64, 64)], max_new_tokens=12)
    saved = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = [int(free["new_token_ids"][3])]  # pretend token 4 is EOS
    try:
        ignoring = tc.hf_generate(model, processor, IMAGE_PROMPT, [noise_image(64, 64)], max_new_tokens=12)
        stopping = tc.hf_generate(
            model, processor, IMAGE_PROMPT, [noise_image(64, 64)], max_new_tokens=12, stop_at_eos=True
        )
    finally:
        model.generation_config.eos_token_id = saved
    # Default: EOS neither stops generation nor alters the argmax.
    np.testing.assert_array_equal(ignoring["new_token_ids"], free["new_token_ids"])
    first = int(np.flatnonzero(free["new_token_ids"] == free["new_token_ids"][3])[0])
    np.testing.assert_array_equal(stopping["new_token_ids"], free["new_token_ids"][: first + 1])


def test_hf_generate_text_only_and_two_images(hf_a):
    model, processor = hf_a
    text_only = tc.hf_generate(
        model, processor, [{"role": "user", "content": "Hello, who are you?"}], None, max_new_tokens=32
    )
    assert text_only["new_token_ids"].shape == (32,) and "pixel_values" not in text_only
    two = [
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Compare."}],
        }
    ]
    ref = tc.hf_generate(
        model, processor, two, [noise_image(56, 56), noise_image(90, 200, 2)], max_new_tokens=32, add_vision_id=True
    )
    assert "Picture 1: <|vision_start|>" in ref["text"] and "Picture 2: <|vision_start|>" in ref["text"]
    counts = (ref["image_grid_thw"].prod(-1) // 4).tolist()
    assert int(ref["mm_token_type_ids"].sum()) == sum(counts)
    assert ref["new_token_ids"].shape == (32,)


# --- tokenizer -------------------------------------------------------------------------------


def test_tokenizer_round_trips_japanese(tiny_ckpt_a):
    from tokenizers import Tokenizer

    raw = Tokenizer.from_file(str(tiny_ckpt_a / "tokenizer.json"))
    hf = transformers.AutoTokenizer.from_pretrained(str(tiny_ckpt_a))
    assert type(hf).__name__ == "Qwen2Tokenizer"
    assert 400 <= raw.get_vocab_size() <= 1000
    for text in [JAPANESE, "Describe the image.", "Mixed: 東京 42 🌲 <|im_end|>x"]:
        ids = raw.encode(text).ids
        assert raw.decode(ids, skip_special_tokens=False) == text
        # transformers rebuilds Qwen2Tokenizer from vocab+merges; it must agree with tokenizer.json.
        assert hf(text)["input_ids"] == ids
        assert hf.decode(ids) == text
    # Characters outside the training text split into several byte tokens (streaming needs that).
    assert len(raw.encode("鬱").ids) == 3
    # Special tokens are single, unsplit ids.
    ids = tc.special_token_ids()
    assert raw.encode("<|vision_start|><|image_pad|><|vision_end|>").ids == [
        ids["<|vision_start|>"],
        ids["<|image_pad|>"],
        ids["<|vision_end|>"],
    ]
    assert hf.eos_token == "<|im_end|>" and hf.pad_token == "<|endoftext|>"


@pytest.mark.parametrize("location", ["tokenizer_config", "chat_template.json", "chat_template.jinja"])
def test_hf_processor_finds_chat_template(location, make_ckpt):
    ckpt = make_ckpt(variant="a", chat_template_location=location)
    processor = tc.make_hf_processor(ckpt)
    assert processor.chat_template == tc.QWEN2_VL_CHAT_TEMPLATE
    assert processor.apply_chat_template(IMAGE_PROMPT, add_generation_prompt=True) == EXPECTED_IMAGE_PROMPT


def test_hf_processor_image_kwargs_override(tiny_ckpt_a):
    processor = tc.make_hf_processor(tiny_ckpt_a, max_pixels=28 * 28 * 4)
    out = processor(text=["<|vision_start|><|image_pad|><|vision_end|>"], images=[noise_image(200, 300)])
    assert int(np.prod(out["image_grid_thw"][0])) // 4 <= 4
