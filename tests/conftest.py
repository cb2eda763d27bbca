"""Shared fixtures: tiny random checkpoints in the hub layout, and the `reference` marker's rules.

Two builders write them (both around the tokenizer and config files of testkit/tiny_hub.py):

- testkit/tiny_numpy.py, numpy + safetensors only. `np_embedder`, `np_answerer` (converted model
  folders) and `make_np_ckpt` come from it; every test NOT marked `reference` uses these, so
  `pytest -m "not reference"` runs on an install without torch.
- testkit/tiny_checkpoints.py and testkit/tiny_colqwen2.py, torch + transformers + colpali-engine (the
  reference stack). `tiny_ckpt_a`, `tiny_ckpt_b` and `make_ckpt` come from them and serve the
  parity tests only: a test that uses one must be marked `@pytest.mark.reference`, or collection
  stops with an error saying so.

A test marked `reference` is skipped, with the reason, when the reference stack is not installed
(the runtime-only run deselects them instead: `-m "not reference"`).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

# The model, PDF and service builders the tests and bench/ share live in testkit/ (bench imports
# nothing from tests/).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "testkit"))

# Fixtures that need the reference stack to build.
REFERENCE_FIXTURES = frozenset({"tiny_ckpt_a", "tiny_ckpt_b", "make_ckpt"})
REFERENCE_PACKAGES = ("torch", "transformers", "colpali_engine", "peft")


def pytest_collection_modifyitems(config, items):
    """A torch-built fixture in a test not marked `reference` is an error, not a silent dependency."""
    bad = [f"{item.nodeid} uses {sorted(REFERENCE_FIXTURES & set(item.fixturenames))}"
           for item in items
           if REFERENCE_FIXTURES & set(getattr(item, "fixturenames", ())) and not item.get_closest_marker("reference")]
    if bad:
        raise pytest.UsageError("torch-built fixtures in tests not marked @pytest.mark.reference:\n  " + "\n  ".join(bad))


def pytest_runtest_setup(item):
    if item.get_closest_marker("reference"):
        missing = [p for p in REFERENCE_PACKAGES if importlib.util.find_spec(p) is None]
        if missing:
            pytest.skip(f"reference stack not installed ({', '.join(missing)}): pip install -e '.[test]' "
                        "&& pip install --no-deps colpali-engine==0.3.18")


# ---------------------------------------------------------------------------------------------
# Numpy-built (every test)
# ---------------------------------------------------------------------------------------------


def _convert(ckpt: Path, out: Path) -> Path:
    from ragvl.models.converter.convert import convert

    return convert(ckpt, out, log=lambda m: None)


@pytest.fixture(scope="session")
def np_embedder(tmp_path_factory) -> Path:
    """A converted tiny ColQwen2 (variant "a", fp32), as `ragvl models convert` makes it, from a
    numpy-built checkpoint; that checkpoint is `np_embedder.parent / "ckpt"`."""
    from tiny_numpy import make_numpy_checkpoint

    tmp = tmp_path_factory.mktemp("np_embedder")
    return _convert(make_numpy_checkpoint(tmp / "ckpt", variant="a", kind="colqwen2"), tmp / "colqwen2-tiny")


@pytest.fixture(scope="session")
def tiny_embedder(np_embedder) -> Path:
    """The older name of np_embedder (the same folder)."""
    return np_embedder


@pytest.fixture(scope="session")
def tiny_answerer(np_answerer) -> Path:
    """The converted tiny answer model the CLI, server and API tests use (numpy-built, no torch)."""
    return np_answerer


@pytest.fixture(scope="session")
def np_answerer(tmp_path_factory) -> Path:
    """A converted tiny Qwen2-VL (variant "a", fp32, seed 4) from a numpy-built checkpoint; that
    checkpoint is `np_answerer.parent / "ckpt"`."""
    from tiny_numpy import make_numpy_checkpoint

    tmp = tmp_path_factory.mktemp("np_answerer")
    return _convert(make_numpy_checkpoint(tmp / "ckpt", variant="a", seed=4), tmp / "qwen2-vl-tiny")


@pytest.fixture(scope="session")
def make_np_ckpt(tmp_path_factory):
    """Factory: make_np_ckpt(**kwargs) -> Path, kwargs as tiny_numpy.make_numpy_checkpoint (minus out_dir).

    Every call writes a fresh folder, so a test may modify what it gets.
    """
    from tiny_numpy import make_numpy_checkpoint

    def make(**kwargs):
        return make_numpy_checkpoint(tmp_path_factory.mktemp("np_ckpt"), **kwargs)

    return make


# ---------------------------------------------------------------------------------------------
# Torch-built (tests marked `reference` only)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_ckpt_a(tmp_path_factory):
    """Variant "a": nested config, single fp32 model.safetensors, tied lm_head."""
    from tiny_checkpoints import make_checkpoint

    return make_checkpoint(tmp_path_factory.mktemp("tiny_a"), variant="a")


@pytest.fixture(scope="session")
def tiny_ckpt_b(tmp_path_factory):
    """Variant "b": nested config, single fp32 model.safetensors, untied lm_head."""
    from tiny_checkpoints import make_checkpoint

    return make_checkpoint(tmp_path_factory.mktemp("tiny_b"), variant="b")


@pytest.fixture(scope="session")
def make_ckpt(tmp_path_factory):
    """Factory: make_ckpt(**kwargs) -> Path, kwargs as tiny_checkpoints.make_checkpoint (minus out_dir).

    Every call writes a fresh folder (tens of ms), so a test may modify what it gets.
    """
    from tiny_checkpoints import make_checkpoint

    def make(**kwargs):
        return make_checkpoint(tmp_path_factory.mktemp("tiny"), **kwargs)

    return make
