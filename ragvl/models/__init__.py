"""The two models ragvl runs, in three rooms:

- `contract/`: what both sides agree on (architecture config, graph names, rotary helpers, the
  manifest and the model registry); it imports neither of the others;
- `converter/`: build time, Hugging Face checkpoint -> ONNX graphs (numpy + onnx, no torch);
- `runtime/`: run time, the graphs on onnxruntime; it never imports the converter.

`Qwen2VL`, `ColQwen2` and `convert` are importable from here for convenience (lazily).
"""

__all__ = ["Qwen2VL", "ColQwen2", "convert"]


def __getattr__(name: str):
    if name == "Qwen2VL":
        from .runtime import Qwen2VL

        return Qwen2VL
    if name == "ColQwen2":
        from .runtime import ColQwen2

        return ColQwen2
    if name == "convert":
        from .converter import convert

        return convert
    raise AttributeError(f"module 'ragvl.models' has no attribute {name!r}")
