"""`ragvl models convert` and `ragvl chat` as a user runs them, bad input included.

Every failure must be one line on stderr naming the file and the cause, with a non-zero exit.
The checkpoints are numpy-built (testkit/tiny_numpy.py); the one comparison with transformers is
marked `reference`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ragvl.models.converter.convert import convert


def ragvl(*args, check=True) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "ragvl.cli", *map(str, args)], capture_output=True, text=True,
                       timeout=300)
    if check and r.returncode != 0:
        raise AssertionError(f"ragvl {args} failed: {r.stderr}")
    return r


def assert_one_line_error(r: subprocess.CompletedProcess, *needles: str) -> None:
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) >= 1
    err = lines[-1]
    assert err.startswith("ragvl: error: "), r.stderr
    assert "Traceback" not in r.stderr
    for n in needles:
        assert n in err, (n, err)


@pytest.fixture(scope="module")
def ckpt(make_np_ckpt):
    """A numpy-built tiny Qwen2-VL checkpoint (variant "a"), in the hub layout."""
    return make_np_ckpt(variant="a")


@pytest.fixture(scope="module")
def model(ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "tiny-a"
    r = ragvl("models", "convert", ckpt, out, "--dtype", "fp32")  # exact: compared with transformers below
    assert "converted" in r.stderr and r.stdout == ""
    return out


@pytest.fixture
def page(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path / "page.png"
    Image.fromarray(rng.integers(0, 256, (140, 100, 3), dtype=np.uint8)).save(path)
    return path


@pytest.mark.reference
def test_chat_json_matches_transformers(model, ckpt, page):
    from tiny_checkpoints import hf_generate, load_hf_model, make_hf_processor

    r = ragvl("chat", "Describe this image.", "--image", page, "--answerer", model, "--max-new-tokens", 12, "--json")
    out = json.loads(r.stdout)
    assert set(out) >= {"text", "token_ids", "prompt_tokens", "timings"}
    assert set(out["timings"]) >= {"vision_s", "prefill_s", "decode_tok_s"}
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe this image."}]}]
    hf = load_hf_model(ckpt)
    ref = hf_generate(hf, make_hf_processor(ckpt), messages, [Image.open(page)], max_new_tokens=12,
                      stop_at_eos=True)
    assert out["prompt_tokens"] == len(ref["prompt_ids"])
    eos = set(hf.generation_config.eos_token_id if isinstance(hf.generation_config.eos_token_id, list)
              else [hf.generation_config.eos_token_id])
    assert out["token_ids"] == [t for t in ref["new_token_ids"].tolist() if t not in eos]


def test_chat_streams_text_to_stdout_and_progress_to_stderr(model, page):
    r = ragvl("chat", "Hi", "--image", page, "--answerer", model, "--max-new-tokens", 5)
    assert "prompt tokens" in r.stderr and "; load " in r.stderr  # opening the model: apart from the stages
    assert "prompt tokens" not in r.stdout
    out = json.loads(ragvl("chat", "Hi", "--image", page, "--answerer", model, "--max-new-tokens", 5,
                           "--json").stdout)
    text = out["text"]
    assert text.strip() and r.stdout.strip() == text.strip()  # the answer itself is what stdout holds
    # A new process opens the sessions: that is load_s, outside vision_s and prefill_s.
    assert set(out["timings"]) >= {"load_s", "vision_s", "prefill_s", "first_token_s", "decode_tok_s"}
    assert out["timings"]["load_s"] > 0


def test_chat_sampling_is_seedable(model, page):
    args = ("chat", "Hi", "--image", page, "--answerer", model, "-n", 10, "--temperature", 1.5, "--top-p", 0.95,
            "--top-k-sampling", 50, "--repetition-penalty", 1.1, "--json")
    a = json.loads(ragvl(*args, "--seed", 1).stdout)
    b = json.loads(ragvl(*args, "--seed", 1).stdout)
    assert a["token_ids"] == b["token_ids"]
    # Really sampled: another seed draws other tokens, and neither is the greedy answer (the
    # checkpoint's generation config is effectively greedy: top_k 1). A sample may draw the
    # end-of-text token early, so the lengths may differ.
    other = json.loads(ragvl(*args, "--seed", 2).stdout)
    greedy = json.loads(ragvl("chat", "Hi", "--image", page, "--answerer", model, "-n", 10, "--json").stdout)
    assert 0 < len(a["token_ids"]) <= 10 and 0 < len(other["token_ids"]) <= 10
    assert other["token_ids"] != a["token_ids"]
    assert greedy["token_ids"] not in (a["token_ids"], other["token_ids"])


def test_chat_has_no_deprecated_spellings_and_no_short_i(model, page):
    """`--model` and `--top-k` were spellings of a release that never shipped; `-i` is --interactive
    wherever it exists (ask), so chat's --image has no short flag."""
    for old in (("--model", model), ("--top-k", 5), ("-i", page)):
        r = ragvl("chat", "Hi", "--answerer", model, *old, check=False)
        assert r.returncode == 2 and f"No such option: {old[0]}" in r.stderr


def test_convert_and_pull_share_the_default_dtype(ckpt, tmp_path):
    from typer.main import get_command

    from ragvl.cli import app
    from ragvl.models.contract import DEFAULT_DTYPE

    group = get_command(app).commands["models"]
    defaults = {name: next(p.default for p in group.commands[name].params if p.name == "dtype")
                for name in ("convert", "pull")}
    assert defaults == {"convert": DEFAULT_DTYPE, "pull": DEFAULT_DTYPE}
    ragvl("models", "convert", ckpt, tmp_path / "m")
    assert json.loads((tmp_path / "m" / "ragvl.json").read_text())["dtype"] == DEFAULT_DTYPE


def test_unreadable_image(model, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    assert_one_line_error(ragvl("chat", "Hi", "--image", bad, "--answerer", model, check=False), "broken.png")
    assert_one_line_error(ragvl("chat", "Hi", "--image", tmp_path / "nope.jpg", "--answerer", model, check=False),
                          "nope.jpg")


def test_not_a_ragvl_model(ckpt, page, tmp_path):
    assert_one_line_error(ragvl("chat", "Hi", "--answerer", ckpt, check=False), "not a ragvl model")
    assert_one_line_error(ragvl("chat", "Hi", "--answerer", tmp_path / "missing", check=False), "missing")


def test_missing_model_option(page, monkeypatch, tmp_path):
    monkeypatch.delenv("RAGVL_ANSWERER", raising=False)
    monkeypatch.setenv("RAGVL_HOME", str(tmp_path / "home"))
    assert_one_line_error(ragvl("chat", "Hi", check=False), "--answerer", "ragvl models pull", "ragvl models convert")


def test_missing_shard(make_np_ckpt, tmp_path):
    ckpt = make_np_ckpt(variant="a", sharded=True)
    shard = sorted(ckpt.glob("*.safetensors"))[0]
    shard.unlink()
    assert_one_line_error(ragvl("models", "convert", ckpt, tmp_path / "out", check=False), shard.name)
    assert not (tmp_path / "out").exists()


def test_corrupt_safetensors(make_np_ckpt, tmp_path):
    ckpt = make_np_ckpt(variant="a")
    f = ckpt / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    assert_one_line_error(ragvl("models", "convert", ckpt, tmp_path / "out", check=False), "model.safetensors")
    f.write_bytes(b"garbage")
    assert_one_line_error(ragvl("models", "convert", ckpt, tmp_path / "out", check=False), "model.safetensors")
    assert not (tmp_path / "out").exists()


def test_missing_and_unexpected_tensors_are_named(make_np_ckpt, tmp_path):
    from safetensors.numpy import load_file, save_file

    ckpt = make_np_ckpt(variant="a")
    tensors = load_file(ckpt / "model.safetensors")
    del tensors["model.layers.1.mlp.up_proj.weight"]
    tensors["model.layers.1.mlp.extra.weight"] = np.zeros(3, np.float32)
    save_file(tensors, ckpt / "model.safetensors")
    r = ragvl("models", "convert", ckpt, tmp_path / "out", check=False)
    assert_one_line_error(r, "model.layers.1.mlp.up_proj.weight", "model.layers.1.mlp.extra.weight")


def test_not_qwen2vl_architecture(make_np_ckpt, tmp_path):
    ckpt = make_np_ckpt(variant="a")
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["architectures"], cfg["model_type"] = ["LlamaForCausalLM"], "llama"
    (ckpt / "config.json").write_text(json.dumps(cfg))
    assert_one_line_error(ragvl("models", "convert", ckpt, tmp_path / "out", check=False), "LlamaForCausalLM",
                          "config.json")


def test_convert_refuses_to_overwrite(model, ckpt):
    assert_one_line_error(ragvl("models", "convert", ckpt, model, check=False), "--force")


def test_manifest_hashes_every_file(model):
    import hashlib

    m = json.loads((model / "ragvl.json").read_text())
    assert m["kind"] == "qwen2-vl" and m["dtype"] == "fp32"
    assert {"vision.onnx", "vision.onnx.data", "decoder.onnx", "decoder.onnx.data", "embed.onnx",
            "tokenizer.json"} <= set(m["files"])
    for name, info in m["files"].items():
        assert hashlib.sha256((model / name).read_bytes()).hexdigest() == info["sha256"]


def test_truncated_model_file_is_caught(ckpt, tmp_path, page):
    out = convert(ckpt, tmp_path / "m", log=lambda m: None)
    data = out / "decoder.onnx.data"
    data.write_bytes(data.read_bytes()[:100])
    assert_one_line_error(ragvl("chat", "Hi", "--answerer", out, check=False), "decoder.onnx.data")


def test_missing_cuda_provider_is_loud(model, page):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA is available here")
    assert_one_line_error(ragvl("chat", "Hi", "--answerer", model, "--device", "cuda", check=False),
                          "CUDAExecutionProvider")


def test_int8_kernel_choice(make_np_ckpt, tmp_path):
    """--int8-kernel nbits keeps MatMulNBits in the embedder's many-row graphs (the default is the rows
    kernel, tests/test_quantize.py); a bad value is a one-line error and writes nothing."""
    from test_quantize import graph_ops

    ckpt = make_np_ckpt(variant="a", kind="colqwen2")
    ragvl("models", "convert", ckpt, tmp_path / "nbits", "--dtype", "int8", "--int8-kernel", "nbits")
    for graph in ("vision", "encoder"):
        ops = graph_ops(tmp_path / "nbits", graph)
        assert "MatMulNBits" in ops and "MatMulInteger" not in ops
    wf = json.loads((tmp_path / "nbits" / "ragvl.json").read_text())["weight_format"]
    assert {g: f["kernel"] for g, f in wf.items()} == {"vision": "nbits", "encoder": "nbits", "embed": "nbits"}
    r = ragvl("models", "convert", ckpt, tmp_path / "bad", "--dtype", "int8", "--int8-kernel", "vnni", check=False)
    assert_one_line_error(r, "--int8-kernel vnni", "rows or nbits")
    assert not (tmp_path / "bad").exists()
