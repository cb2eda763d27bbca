"""Run time: converted graphs on onnxruntime (sessions, preprocessing, the tokenizer, generation,
the KV-cache conversation, cancellation). It never imports the converter."""

from .cancel import Cancellation, Cancelled
from .colqwen2 import DOC_PROMPT, MAX_PIXELS, ColQwen2, embedder_id
from .generation import GenerationSettings
from .preprocess import ImageConfig, smart_resize
from .qwen2vl import Generation, Qwen2VL, user_message
from .vlm import ImageFeatures, image_config_key

__all__ = ["Cancellation", "Cancelled", "DOC_PROMPT", "MAX_PIXELS", "ColQwen2", "embedder_id", "GenerationSettings",
           "ImageConfig", "smart_resize", "Generation", "Qwen2VL", "user_message", "ImageFeatures", "image_config_key"]
