"""The numpy-only tiny checkpoint builder (testkit/tiny_numpy.py): hub files and key names, and, on the
reference stack, that transformers, colpali-engine and peft load what it writes with exactly its
tensors (so the runtime-only tests stand on checkpoints a real hub download looks like)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import tiny_hub as th
from tiny_numpy import hub_shapes, hub_tensors, make_numpy_checkpoint, make_numpy_lora


def stored(ckpt) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    out = {}
    for f in sorted(ckpt.glob("*.safetensors")):
        out.update(load_file(f))
    return out


@pytest.mark.parametrize("variant", ["a", "b"])
@pytest.mark.parametrize("kind", ["qwen2-vl", "colqwen2"])
def test_files_keys_and_config(tmp_path, variant, kind):
    spec = th.SPECS[variant]
    ckpt = make_numpy_checkpoint(tmp_path, variant=variant, kind=kind)
    tensors = stored(ckpt)
    assert {k: v.shape for k, v in tensors.items()} == hub_shapes(spec, kind)
    assert all(v.dtype == np.float32 for v in tensors.values())
    assert ("lm_head.weight" in tensors) == (kind == "qwen2-vl" and not spec.tie_word_embeddings)
    assert ("custom_text_proj.weight" in tensors) == (kind == "colqwen2")
    assert tensors["model.embed_tokens.weight"].shape == (spec.vocab_size, spec.hidden_size)
    assert spec.vocab_size > th.tokenizer_size()  # padded past the tokenizer, like the hub's
    cfg = json.loads((ckpt / "config.json").read_text())
    assert cfg == (th.flat_config(spec) if kind == "qwen2-vl" else th.colqwen2_config(spec, "flat"))
    assert "text_config" not in cfg and cfg["rope_scaling"]["type"] == "mrope"  # the flat 4.x layout
    assert (ckpt / "generation_config.json").exists() == (kind == "qwen2-vl")
    assert {"tokenizer.json", "tokenizer_config.json", "preprocessor_config.json"} <= {p.name for p in ckpt.iterdir()}
    assert json.loads((ckpt / "tokenizer_config.json").read_text())["chat_template"] == th.QWEN2_VL_CHAT_TEMPLATE


def test_weights_follow_the_recipe_and_the_seed(tmp_path):
    spec = th.SPECS["a"]
    w = hub_tensors(spec, "qwen2-vl", seed=0)
    assert abs(w["model.layers.0.mlp.up_proj.weight"].std() - spec.initializer_range) < 0.02
    assert abs(w["model.norm.weight"].mean() - 1) < 0.1 and w["model.norm.weight"].std() > 0.05
    assert abs(w["visual.merger.ln_q.weight"].mean() - 1) < 0.1
    assert 0.05 < w["model.layers.0.self_attn.q_proj.bias"].std() < 0.2
    again, other = hub_tensors(spec, "qwen2-vl", seed=0), hub_tensors(spec, "qwen2-vl", seed=1)
    assert all(np.array_equal(w[k], again[k]) for k in w)
    assert not np.array_equal(w["model.norm.weight"], other["model.norm.weight"])


def test_sharded_and_float16(tmp_path):
    ckpt = make_numpy_checkpoint(tmp_path, variant="b", sharded=True, num_shards=3, dtype="float16")
    index = json.loads((ckpt / "model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    tensors = stored(ckpt)
    assert sorted(index["weight_map"]) == sorted(tensors)
    want = hub_tensors(th.SPECS["b"], "qwen2-vl")
    assert all(tensors[k].dtype == np.float16 and np.array_equal(tensors[k], want[k].astype(np.float16)) for k in want)
    assert json.loads((ckpt / "config.json").read_text())["torch_dtype"] == "float16"
    with pytest.raises(ValueError, match="bfloat16"):
        make_numpy_checkpoint(tmp_path / "bf16", dtype="bfloat16")


def test_lora_adapter_layout(tmp_path):
    base = make_numpy_checkpoint(tmp_path / "base", kind="colqwen2")
    adapter = make_numpy_lora(base, tmp_path / "adapter", r=4)
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    assert (cfg["r"], cfg["lora_alpha"], cfg["peft_type"]) == (4, 8, "LORA")
    tensors = stored(adapter)
    spec = th.SPECS["a"]
    linears = 7 * spec.num_layers + 1  # q k v o gate up down per layer, plus custom_text_proj
    assert len(tensors) == 2 * linears
    assert tensors["base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight"].shape == (4, spec.hidden_size)
    assert tensors["base_model.model.custom_text_proj.lora_B.weight"].shape == (th.EMBED_DIM, 4)
    assert not any(".visual." in k or "embed_tokens" in k for k in tensors)
    assert (adapter / "tokenizer.json").exists()  # the hub adapter repo ships the processor files


# --- the reference stack loads them -----------------------------------------------------------


@pytest.mark.reference
@pytest.mark.parametrize("variant", ["a", "b"])
@pytest.mark.parametrize("kind", ["qwen2-vl", "colqwen2"])
def test_same_keys_and_shapes_as_the_torch_builders(variant, kind):
    import tiny_checkpoints as tc
    import tiny_colqwen2 as tq

    ref = tq.colqwen2_hub_tensors(variant) if kind == "colqwen2" else tc.hub_state_dict(tc.build_hf_model(variant))
    assert {k: tuple(v.shape) for k, v in ref.items()} == hub_shapes(th.SPECS[variant], kind)


@pytest.mark.reference
@pytest.mark.parametrize("variant,sharded,dtype", [("a", False, "float32"), ("b", True, "float16")])
def test_transformers_loads_exactly_these_tensors(tmp_path, variant, sharded, dtype):
    import torch
    from tiny_checkpoints import load_hf_model, to_hub_name

    spec = th.SPECS[variant]
    ckpt = make_numpy_checkpoint(tmp_path, variant=variant, sharded=sharded, dtype=dtype)
    model = load_hf_model(ckpt)
    want = stored(ckpt)
    got = {to_hub_name(k): v for k, v in model.state_dict().items()}
    if spec.tie_word_embeddings:
        assert torch.equal(got.pop("lm_head.weight"), got["model.embed_tokens.weight"])
    assert sorted(got) == sorted(want)
    for k, v in want.items():
        assert torch.equal(got[k], torch.from_numpy(v.astype(np.float32))), k
    text = model.config.text_config
    assert (text.hidden_size, text.num_hidden_layers, text.num_key_value_heads) == (
        spec.hidden_size, spec.num_layers, spec.num_kv_heads)
    assert text.rope_parameters["mrope_section"] == list(spec.mrope_section)
    assert model.config.image_token_id == th.special_token_ids()["<|image_pad|>"]


@pytest.mark.reference
def test_colpali_and_peft_load_exactly_these_tensors(tmp_path):
    import torch
    import tiny_colqwen2 as tq

    base = make_numpy_checkpoint(tmp_path / "base", variant="b", kind="colqwen2")
    model = tq.load_colqwen2(base)  # raises on any missing / unexpected key
    got = model.state_dict()
    want = {tq.hub_to_model_name(k): v for k, v in stored(base).items()}
    assert sorted(got) == sorted(want)
    for k, v in want.items():
        assert torch.equal(got[k], torch.from_numpy(v)), k
    adapter = make_numpy_lora(base, tmp_path / "adapter")
    merged = tq.merged_reference(base, adapter).state_dict()  # raises unless peft took every tensor
    manual = tq.manual_merge(base, adapter)
    assert manual and all(torch.allclose(merged[k], v, rtol=0, atol=1e-6) for k, v in manual.items())
