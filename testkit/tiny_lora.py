"""ColQwen2 key names and PEFT LoRA adapter folders like vidore/colqwen2-v1.0, for the tiny test
checkpoints. Torch-free: the weights come from a normal sampler the caller passes (numpy's in
testkit/tiny_numpy.py, torch's in testkit/tiny_colqwen2.py).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any, Callable

from tiny_tokenizer import _write_json

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
