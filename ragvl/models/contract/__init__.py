"""What the converter and the runtime agree on: architecture configs, graph and KV names, the
rotary helpers, the manifest a converted folder carries, the model registry, where a graph's
tensors keep their bytes (external data), and what this CPU can multiply in integers (which int8
kernel runs here). It imports neither side."""

from .cpu import (INT8_KERNELS, CpuFeatures, best_int8_kernel, column_scaled_blocks, cpu_features, graph_kernels,
                  int8_kernel, stored_blocks_first)
from .external import external_location
from .config import COLQWEN2_ARCHITECTURES, TextConfig, VisionConfig, read_config
from .manifest import KIND_ANSWERER, KIND_EMBEDDER, MANIFEST, model_config, read_manifest, write_manifest
from .names import VECTOR_DIM, kv_names, optimized_graph, optimized_key
from .optimized import optimized_record, optimized_status, same_optimizer
from .registry import (DEFAULT_DTYPE, KNOWN_MODELS, KnownModel, default_model, installed_models, models_dir,
                       resolve_model, set_default)
from .rope import mrope_inv_freq, mrope_positions

__all__ = ["COLQWEN2_ARCHITECTURES", "TextConfig", "VisionConfig", "read_config", "KIND_ANSWERER", "KIND_EMBEDDER",
           "MANIFEST", "model_config", "read_manifest", "write_manifest", "VECTOR_DIM", "kv_names", "optimized_graph",
           "optimized_record", "optimized_status", "same_optimizer",
           "optimized_key", "DEFAULT_DTYPE", "KNOWN_MODELS", "KnownModel", "default_model", "installed_models",
           "models_dir", "resolve_model", "set_default", "mrope_inv_freq", "mrope_positions",
           "INT8_KERNELS", "CpuFeatures", "best_int8_kernel", "cpu_features", "graph_kernels", "int8_kernel", "stored_blocks_first", "column_scaled_blocks",
           "external_location"]
