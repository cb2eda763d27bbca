"""ragvl: local visual RAG over PDFs on onnxruntime."""

__version__ = "0.1.0"
