"""ragvl: local visual RAG over PDFs on onnxruntime.

`ragvl.Index` is the Python API (see ragvl/api.py); it is imported on first use so that
`import ragvl` stays cheap.
"""

__version__ = "0.1.0"
__all__ = ["Index", "__version__"]


def __getattr__(name: str):
    if name == "Index":
        from .api import Index

        return Index
    raise AttributeError(f"module 'ragvl' has no attribute {name!r}")
