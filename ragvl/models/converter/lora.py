"""Merging a PEFT LoRA adapter into its base checkpoint while converting, without torch or peft.

vidore/colqwen2-v1.0 is such an adapter over vidore/colqwen2-base. Each adapted Linear weight
becomes W + scale * B @ A (scale = lora_alpha / r, or lora_alpha / sqrt(r) with rsLoRA), as
peft's merge_and_unload does; modules saved whole (`modules_to_save`) replace the base tensor.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from ...errors import RagvlError
from .checkpoint import Checkpoint, TensorSource, canonical_name

ADAPTER_CONFIG = "adapter_config.json"


def is_adapter(folder: Path) -> bool:
    return (Path(folder) / ADAPTER_CONFIG).exists()


class LoraAdapter:
    """The A/B pairs and whole-module replacements of one adapter folder, by canonical name."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        path = self.folder / ADAPTER_CONFIG
        try:
            self.config = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise RagvlError(f"{path}: unreadable adapter config ({e})") from None
        if self.config.get("peft_type", "LORA").upper() != "LORA":
            raise RagvlError(f"{path}: peft_type {self.config.get('peft_type')} is not supported (only LORA)")
        if self.config.get("use_dora"):
            raise RagvlError(f"{path}: DoRA adapters are not supported")
        if self.config.get("fan_in_fan_out"):
            raise RagvlError(f"{path}: fan_in_fan_out adapters are not supported")
        if not list(self.folder.glob("*.safetensors")):
            raise RagvlError(f"{self.folder}: no adapter_model.safetensors (a .bin adapter must be re-saved "
                             f"as safetensors)")
        self.ckpt = Checkpoint(self.folder)
        self.pairs: dict[str, tuple[str, str]] = {}  # module -> (lora_A raw name, lora_B raw name)
        self.whole: dict[str, str] = {}  # tensor -> raw name
        for raw in self.ckpt.names():
            name = canonical_name(raw)
            m = re.match(r"(.+)\.lora_([AB])(?:\.[^.]+)?\.weight$", name)
            if m:
                a, b = self.pairs.get(m[1], ("", ""))
                self.pairs[m[1]] = (raw, b) if m[2] == "A" else (a, raw)
            elif "lora_" in name:
                raise RagvlError(f"{self.folder}: adapter tensor {raw} is of an unsupported kind")
            else:
                self.whole[name.replace(".modules_to_save.default", "")] = raw
        broken = [m for m, (a, b) in self.pairs.items() if not a or not b]
        if broken:
            raise RagvlError(f"{self.folder}: LoRA modules missing lora_A or lora_B: {', '.join(broken[:5])}")

    @property
    def base_name(self) -> str:
        return str(self.config.get("base_model_name_or_path", "?"))

    def _scale(self, module: str, r: int) -> float:
        alpha = self.config.get("lora_alpha", r)
        for pattern, a in (self.config.get("alpha_pattern") or {}).items():
            if re.fullmatch(pattern, module) or module.endswith(pattern):
                alpha = a
        return alpha / (np.sqrt(r) if self.config.get("use_rslora") else r)

    def delta(self, module: str) -> np.ndarray:
        """scale * B @ A for one adapted module: (out, in) float32."""
        a_raw, b_raw = self.pairs[module]
        a, b = self.ckpt.get(a_raw), self.ckpt.get(b_raw)  # (r, in), (out, r)
        return (np.float32(self._scale(module, a.shape[0])) * (b @ a)).astype(np.float32)

    def close(self) -> None:
        self.ckpt.close()


class MergedSource(TensorSource):
    """A base checkpoint's tensors with an adapter merged in, as one TensorSource."""

    def __init__(self, base: Checkpoint, adapter: LoraAdapter):
        super().__init__(base)
        self.adapter = adapter
        unknown = [m + ".weight" for m in adapter.pairs if m + ".weight" not in self._by_name]
        unknown += [t for t in adapter.whole if t not in self._by_name]
        if unknown:
            raise RagvlError(f"{adapter.folder}: adapter targets tensors its base {base.folder} does not have: "
                             f"{', '.join(sorted(unknown)[:5])}")

    def get(self, name: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
        if name in self.adapter.whole:
            self._require(name)
            self.used.add(name)
            arr = self.adapter.ckpt.get(self.adapter.whole[name])
            if shape is not None and tuple(arr.shape) != tuple(shape):
                raise RagvlError(f"{self.adapter.folder}: tensor {name} has shape {tuple(arr.shape)}, "
                                 f"expected {tuple(shape)}")
            return arr
        w = super().get(name, shape)
        module = name.removesuffix(".weight")
        if name.endswith(".weight") and module in self.adapter.pairs:
            d = self.adapter.delta(module)
            if d.shape != w.shape:
                raise RagvlError(f"{self.adapter.folder}: LoRA update for {module} has shape {d.shape}, "
                                 f"the base weight {w.shape}")
            w += d
        return w
