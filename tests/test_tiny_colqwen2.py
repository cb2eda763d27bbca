"""The tiny-ColQwen2 harness itself: hub layout on disk, colpali-engine loads every variant to the
weights written, its embeddings and prompts are what ColQwen2 computes, the M-RoPE state pitfalls
of transformers 5.3, and the LoRA adapter / merge reference."""

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
except ImportError:
    torch = None

import tiny_checkpoints as tc  # noqa: E402
import tiny_colqwen2 as tq  # noqa: E402

QUERIES = [
    "what is the revenue in 2023?",
    "東京タワー",
    "a much longer query about the quick brown fox and the lazy dog",
]


def noise_image(h: int, w: int, seed: int = 0) -> PIL.Image.Image:
    rng = np.random.default_rng(seed)
    return PIL.Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


# Three sizes, so a batch of two is padded: 100x150 -> 20 tokens, 200x90 -> 21, 60x60 -> 4.
IMAGES = [noise_image(100, 150, 0), noise_image(200, 90, 1), noise_image(60, 60, 2)]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tq.make_colqwen2_checkpoint(tmp_path_factory.mktemp("colqwen2_a"), variant="a")


@pytest.fixture(scope="module")
def colpali(ckpt):
    return tq.load_colqwen2(ckpt), tq.make_colqwen2_processor(ckpt)


@pytest.fixture(scope="module")
def lora(tmp_path_factory, ckpt):
    adapter = tq.make_colqwen2_lora(ckpt, tmp_path_factory.mktemp("colqwen2_lora"))
    return adapter, tq.merged_reference(ckpt, adapter)


# --- layout on disk --------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["a", "b"])
def test_checkpoint_keys_are_hub_names(variant, tmp_path):
    d = tq.make_colqwen2_checkpoint(tmp_path, variant=variant)
    spec = tc.SPECS[variant]
    tensors = tc.read_hub_tensors(d)
    other = sorted(k for k in tensors if not k.startswith(("visual.", "model.layers.")))
    # No lm_head even for the untied variant "b": ColQwen2 is a Qwen2VLModel.
    assert other == [
        "custom_text_proj.bias",
        "custom_text_proj.weight",
        "model.embed_tokens.weight",
        "model.norm.weight",
    ]
    assert tensors["custom_text_proj.weight"].shape == (128, spec.hidden_size)
    assert tensors["custom_text_proj.bias"].shape == (128,)
    assert not any("language_model" in k for k in tensors)
    assert sum(k.endswith("self_attn.q_proj.bias") for k in tensors) == spec.num_layers
    # The Qwen2-VL part is exactly tiny_checkpoints' model of the same seed.
    qwen = tc.hub_state_dict(tc.build_hf_model(variant, seed=0))
    for k, v in qwen.items():
        if k != "lm_head.weight":
            assert torch.equal(tensors[k], v), k
    # Non-trivial biases (a port dropping custom_text_proj.bias must fail).
    assert tensors["custom_text_proj.bias"].abs().min() > 0

    cfg = json.loads((d / "config.json").read_text())
    assert cfg["architectures"] == ["ColQwen2"] and cfg["model_type"] == "qwen2_vl"
    assert cfg["text_config"]["hidden_size"] == spec.hidden_size
    pre = json.loads((d / "preprocessor_config.json").read_text())
    assert pre["processor_class"] == "ColQwen2Processor" and pre["max_pixels"] == tc.TINY_MAX_PIXELS
    assert (d / "tokenizer.json").exists() and not (d / "generation_config.json").exists()


def test_prefixed_checkpoint_keys(tmp_path):
    one = tc.read_hub_tensors(tq.make_colqwen2_checkpoint(tmp_path / "p", prefix="base_model.model."))
    assert sorted(k for k in one if k.startswith("base_model.")) == [
        "base_model.model.custom_text_proj.bias",
        "base_model.model.custom_text_proj.weight",
    ]
    every = tc.read_hub_tensors(
        tq.make_colqwen2_checkpoint(tmp_path / "all", prefix="base_model.model.", prefix_scope="all")
    )
    assert all(k.startswith("base_model.model.") for k in every)
    assert "base_model.model.model.layers.0.self_attn.q_proj.weight" in every


def test_builders_are_deterministic(tmp_path):
    one = tq.make_colqwen2_checkpoint(tmp_path / "one", variant="b", sharded=True, dtype="bfloat16")
    adapter = tq.make_colqwen2_lora(one, tmp_path / "one_lora")
    two = tq.make_colqwen2_checkpoint(tmp_path / "two", variant="b", sharded=True, dtype="bfloat16")
    adapter2 = tq.make_colqwen2_lora(two, tmp_path / "two_lora")
    for f in sorted(p.name for p in one.iterdir()):
        assert (one / f).read_bytes() == (two / f).read_bytes(), f
    a = (adapter / "adapter_model.safetensors").read_bytes()
    assert a == (adapter2 / "adapter_model.safetensors").read_bytes()


# --- colpali-engine loads every variant to the weights written ---------------------------------

LOAD_CASES = [
    ("a", "nested", False, "float32", ""),
    ("a", "flat", False, "float32", ""),
    ("a", "nested", True, "float32", ""),
    ("a", "flat", False, "bfloat16", ""),
    ("a", "nested", False, "float32", "base_model.model."),
    ("a", "flat", True, "bfloat16", "base_model.model."),
    ("b", "flat", False, "float32", ""),
    ("b", "nested", True, "bfloat16", "base_model.model."),
]


@pytest.mark.parametrize("variant,layout,sharded,dtype,prefix", LOAD_CASES)
def test_colpali_loads_identical_weights(variant, layout, sharded, dtype, prefix, tmp_path):
    d = tq.make_colqwen2_checkpoint(
        tmp_path, variant=variant, layout=layout, sharded=sharded, dtype=dtype, prefix=prefix
    )
    model = tq.load_colqwen2(d)  # raises on any missing / unexpected key
    got = model.state_dict()
    want = {
        tq.hub_to_model_name(k): v.to(getattr(torch, dtype)).float()
        for k, v in tq.colqwen2_hub_tensors(variant, seed=0).items()
    }
    assert sorted(got) == sorted(want)
    for k, v in want.items():
        assert got[k].dtype == torch.float32
        assert torch.equal(got[k], v), k
    assert tq.expected_colqwen2_state(d).keys() == want.keys()
    spec = tc.SPECS[variant]
    text = model.config.text_config
    assert (text.hidden_size, text.num_hidden_layers, text.num_key_value_heads) == (
        spec.hidden_size,
        spec.num_layers,
        spec.num_kv_heads,
    )
    assert text.rope_parameters["mrope_section"] == list(spec.mrope_section)
    assert model.config.image_token_id == tc.special_token_ids()["<|image_pad|>"]
    assert model.custom_text_proj.out_features == 128 and not model.mask_non_image_embeddings


def test_fully_prefixed_checkpoint_is_not_loadable_by_colpali(tmp_path):
    """colpali-engine 0.3.18 maps only base_model.model.custom_text_proj; a fully prefixed
    checkpoint would silently stay random, which load_colqwen2 turns into an error."""
    d = tq.make_colqwen2_checkpoint(tmp_path, prefix="base_model.model.", prefix_scope="all")
    with pytest.raises(AssertionError, match="did not load cleanly"):
        tq.load_colqwen2(d)


# --- embeddings and prompts ------------------------------------------------------------------


def test_document_embeddings_and_prompt_ids(colpali):
    model, processor = colpali
    embs = tq.colpali_embed_images(model, processor, IMAGES, batch_size=2)
    assert len(embs) == 3
    ids = tc.special_token_ids()
    for img, emb in zip(IMAGES, embs):
        batch = processor.process_images([img])
        n_img = int(batch["image_grid_thw"][0].prod()) // 4
        expected = tq.document_prompt_ids(processor, n_img)
        assert batch["input_ids"][0].tolist() == expected
        text = processor.tokenizer.decode(expected)
        assert text == (
            "<|im_start|>user\n<|vision_start|>"
            + "<|image_pad|>" * n_img
            + "<|vision_end|>Describe the image.<|im_end|><|endoftext|>"
        )
        assert expected.count(ids["<|image_pad|>"]) == n_img
        assert emb.dtype == np.float32 and emb.shape == (len(expected), 128)
        np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert [e.shape[0] for e in embs] == [len(tq.document_prompt_ids(processor, n)) for n in (20, 21, 4)]

    # In a padded batch, the padding rows of ColQwen2's output are exactly zero and left of the
    # real ones; the harness drops them.
    batch = processor.process_images(IMAGES[1:])
    model.rope_deltas = None
    with torch.no_grad():
        out = model(**batch)
    mask = batch["attention_mask"].bool()
    assert (~mask).sum() > 0 and not mask[1, 0] and mask[1, -1]
    assert torch.all(out[~mask] == 0) and torch.isfinite(out).all()
    np.testing.assert_allclose(out[1][mask[1]].numpy(), embs[2], atol=1e-6)


def test_query_embeddings_and_prompt_ids(colpali):
    model, processor = colpali
    assert processor.query_prefix == "Query: "
    embs = tq.colpali_embed_queries(model, processor, QUERIES, batch_size=2)
    for q, emb in zip(QUERIES, embs):
        expected = tq.query_prompt_ids(processor, q)
        batch = processor.process_queries([q])
        assert batch["input_ids"][0].tolist() == expected
        assert processor.tokenizer.decode(expected) == "Query: " + q + "<|endoftext|>" * 10
        assert emb.shape == (len(expected), 128) and emb.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    # Left padding in a batch, zero rows there.
    batch = processor.process_queries(QUERIES[:2])
    assert processor.tokenizer.padding_side == "left" and batch["attention_mask"][1, 0] == 0
    model.rope_deltas = None
    with torch.no_grad():
        out = model(**batch)
    assert torch.all(out[~batch["attention_mask"].bool()] == 0)


def test_embeddings_do_not_depend_on_batching(colpali):
    model, processor = colpali
    for fn, items in ((tq.colpali_embed_images, IMAGES), (tq.colpali_embed_queries, QUERIES)):
        one = fn(model, processor, items, batch_size=1)
        three = fn(model, processor, items, batch_size=3)
        for a, b in zip(one, three):
            assert a.shape == b.shape
            np.testing.assert_allclose(a, b, atol=2e-5)


def test_scores_are_maxsim(colpali):
    model, processor = colpali
    qs = tq.colpali_embed_queries(model, processor, QUERIES)
    ps = tq.colpali_embed_images(model, processor, IMAGES)
    scores = tq.colpali_scores(processor, qs, ps)
    assert scores.shape == (3, 3) and scores.dtype == np.float32
    manual = np.array([[np.max(q @ p.T, axis=1).sum() for p in ps] for q in qs], dtype=np.float32)
    np.testing.assert_allclose(scores, manual, rtol=1e-5, atol=1e-5)


def test_max_num_visual_tokens(ckpt):
    big = noise_image(600, 400)
    default = tq.make_colqwen2_processor(ckpt).process_images([big])
    assert int(default["image_grid_thw"][0].prod()) // 4 <= 64  # the tiny preprocessor_config cap
    small = tq.make_colqwen2_processor(ckpt, max_num_visual_tokens=16).process_images([big])
    n = int(small["image_grid_thw"][0].prod()) // 4
    assert 8 <= n <= 16
    assert int((small["input_ids"][0] == tc.special_token_ids()["<|image_pad|>"]).sum()) == n


# --- transformers 5.3 M-RoPE details -----------------------------------------------------------


def test_documents_use_3d_mrope_via_mm_token_type_ids(colpali):
    model, processor = colpali
    batch = processor.process_images(IMAGES[:2])
    ids = tc.special_token_ids()
    # ColQwen2Processor returns mm_token_type_ids: 1 exactly on <|image_pad|>, 0 elsewhere.
    assert torch.equal(batch["mm_token_type_ids"], (batch["input_ids"] == ids["<|image_pad|>"]).long())
    qbatch = processor.process_queries(QUERIES[:2])
    assert "mm_token_type_ids" in qbatch and int(qbatch["mm_token_type_ids"].sum()) == 0

    model.rope_deltas = None
    with torch.no_grad():
        with_types = model(**batch)
        deltas = model.rope_deltas.ravel().tolist()
        model.rope_deltas = None
        without = model(**{k: v for k, v in batch.items() if k != "mm_token_type_ids"})
    model.rope_deltas = None
    # 3-D positions were computed: rope delta = max position + 1 - length < 0 for an image.
    # 20 tokens in a 4x5 grid take 5 positions: delta -15; 21 tokens (7x3) take 7: delta -14.
    assert deltas == [-15, -14]
    # Silently dropping to 1-D positions changes the embeddings far beyond float noise.
    assert (with_types - without).abs().max() > 1e-2


def test_rope_deltas_state_between_calls(colpali):
    """Raw colpali-engine usage (no reset) after a document batch: same-size query batch only
    float noise, other sizes crash; the harness resets the state and is order-independent."""
    model, processor = colpali
    docs = processor.process_images(IMAGES[:2])
    queries2 = processor.process_queries(QUERIES[:2])
    with torch.no_grad():
        model.rope_deltas = None
        fresh = model(**queries2)
        model(**docs)
        stale = model(**queries2)
        assert (fresh - stale).abs().max() < 1e-5
        for n in (1, 3):
            model(**docs)
            with pytest.raises(RuntimeError):
                model(**processor.process_queries(QUERIES[:n]))
    model.rope_deltas = None

    first = tq.colpali_embed_queries(model, processor, QUERIES, batch_size=3)
    tq.colpali_embed_images(model, processor, IMAGES[:2], batch_size=2)
    second = tq.colpali_embed_queries(model, processor, QUERIES, batch_size=3)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    assert model.rope_deltas is None


# --- LoRA adapter and merge reference ------------------------------------------------------------


def test_adapter_layout(ckpt, lora):
    adapter, _ = lora
    cfg, tensors = tq.read_adapter(adapter)
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 4 and cfg["lora_alpha"] == 8
    assert cfg["target_modules"] == tq.COLQWEN2_LORA_TARGET_MODULES and cfg["modules_to_save"] is None
    assert cfg["task_type"] == "FEATURE_EXTRACTION" and cfg["base_model_name_or_path"] == str(ckpt)
    spec = tc.SPECS["a"]
    modules = sorted({k[: -len(".lora_A.weight")] for k in tensors if k.endswith(".lora_A.weight")})
    assert len(modules) == 7 * spec.num_layers + 1 and len(tensors) == 2 * len(modules)
    assert "base_model.model.custom_text_proj" in modules
    assert "base_model.model.model.layers.0.self_attn.q_proj" in modules
    assert "base_model.model.model.layers.1.mlp.down_proj" in modules
    assert not any("visual" in m or "language_model" in m or "embed_tokens" in m for m in modules)
    kv = spec.num_kv_heads * spec.head_dim
    assert tensors["base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight"].shape == (4, spec.hidden_size)
    assert tensors["base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight"].shape == (kv, 4)
    assert tensors["base_model.model.model.layers.0.mlp.down_proj.lora_A.weight"].shape == (4, spec.intermediate_size)
    assert tensors["base_model.model.custom_text_proj.lora_B.weight"].shape == (128, 4)
    assert all(t.abs().min() > 0 for k, t in tensors.items() if "lora_B" in k)
    assert (adapter / "tokenizer.json").exists() and (adapter / "preprocessor_config.json").exists()


def test_peft_merge_equals_manual_merge(ckpt, lora):
    adapter, merged = lora
    cfg, ad = tq.read_adapter(adapter)
    base = tq.expected_colqwen2_state(ckpt)
    got = merged.state_dict()
    assert sorted(got) == sorted(base)  # merge_and_unload leaves a plain ColQwen2
    assert type(merged).__name__ == "ColQwen2"

    # One layer spelled out: W + (alpha / r) * B @ A.
    a = ad["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"]
    b = ad["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"]
    w = base["language_model.layers.0.self_attn.q_proj.weight"] + (cfg["lora_alpha"] / cfg["r"]) * (b @ a)
    torch.testing.assert_close(got["language_model.layers.0.self_attn.q_proj.weight"], w, rtol=0, atol=1e-6)

    manual = tq.manual_merge(ckpt, adapter)
    assert len(manual) == 15
    for k, v in base.items():
        if k in manual:
            torch.testing.assert_close(got[k], manual[k], rtol=0, atol=1e-6)
            assert (got[k] - v).abs().max() > 1e-2, k  # the adapter moves every target
        else:
            assert torch.equal(got[k], v), k  # vision tower, norms, biases, embeddings untouched
    assert torch.equal(got["custom_text_proj.bias"], base["custom_text_proj.bias"])


def test_merge_changes_embeddings(colpali, lora, ckpt, tmp_path):
    model, processor = colpali
    _, merged = lora
    base_q = tq.colpali_embed_queries(model, processor, QUERIES)
    base_d = tq.colpali_embed_images(model, processor, IMAGES)
    m_q = tq.colpali_embed_queries(merged, processor, QUERIES)
    m_d = tq.colpali_embed_images(merged, processor, IMAGES)
    for a, b in zip(base_q + base_d, m_q + m_d):
        assert a.shape == b.shape
        assert np.abs(a - b).max() > 0.1  # forgetting the merge is caught
    assert np.abs(tq.colpali_scores(processor, base_q, base_d) - tq.colpali_scores(processor, m_q, m_d)).max() > 0.1

    # A merged checkpoint written from the manual merge loads to the same model (the "-merged" repo).
    adapter, _ = lora
    merged_dir = tq.write_merged_checkpoint(ckpt, adapter, tmp_path / "merged")
    reloaded = tq.load_colqwen2(merged_dir)
    r_q = tq.colpali_embed_queries(reloaded, processor, QUERIES)
    r_d = tq.colpali_embed_images(reloaded, processor, IMAGES)
    for a, b in zip(m_q + m_d, r_q + r_d):
        np.testing.assert_allclose(a, b, atol=2e-5)


def test_transformers5_adapter_layout_merges_the_same(ckpt, lora, tmp_path):
    adapter, merged = lora
    t5 = tq.make_colqwen2_lora(ckpt, tmp_path / "t5", key_layout="transformers5")
    _, tensors = tq.read_adapter(t5)
    assert "base_model.model.language_model.layers.0.self_attn.q_proj.lora_A.weight" in tensors
    assert "base_model.model.custom_text_proj.lora_B.weight" in tensors
    other = tq.merged_reference(ckpt, t5).state_dict()
    for k, v in merged.state_dict().items():
        assert torch.equal(other[k], v), k


def test_peft_saves_transformers5_names(ckpt, tmp_path):
    """What peft 0.20 itself writes for ColQwen2 under transformers 5.3 (why the builder writes the
    hub's names by hand), and that its own regex targets the same 15 layers."""
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file

    model = tq.load_colqwen2(ckpt)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=tq.COLQWEN2_LORA_TARGET_MODULES, task_type="FEATURE_EXTRACTION")
    peft_model = get_peft_model(model, cfg)
    peft_model.save_pretrained(tmp_path / "peft")
    keys = sorted(load_file(str(tmp_path / "peft" / "adapter_model.safetensors")))
    ours = sorted(tq.read_adapter(tq.make_colqwen2_lora(ckpt, tmp_path / "ours", key_layout="transformers5"))[1])
    assert keys == ours
