"""Shared fixtures: tiny random Qwen2-VL checkpoints in the hub layout (see tests/tiny_checkpoints.py).

Building a checkpoint needs torch + transformers (the reference stack); without them the
fixtures skip the tests that use them.
"""

from __future__ import annotations

import pytest


def _require_reference_stack() -> None:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("safetensors")


@pytest.fixture(scope="session")
def tiny_ckpt_a(tmp_path_factory):
    """Variant "a": nested config, single fp32 model.safetensors, tied lm_head."""
    _require_reference_stack()
    from tiny_checkpoints import make_checkpoint

    return make_checkpoint(tmp_path_factory.mktemp("tiny_a"), variant="a")


@pytest.fixture(scope="session")
def tiny_ckpt_b(tmp_path_factory):
    """Variant "b": nested config, single fp32 model.safetensors, untied lm_head."""
    _require_reference_stack()
    from tiny_checkpoints import make_checkpoint

    return make_checkpoint(tmp_path_factory.mktemp("tiny_b"), variant="b")


@pytest.fixture(scope="session")
def make_ckpt(tmp_path_factory):
    """Factory: make_ckpt(**kwargs) -> Path, kwargs as tiny_checkpoints.make_checkpoint (minus out_dir).

    Every call writes a fresh folder (tens of ms), so a test may modify what it gets.
    """
    _require_reference_stack()
    from tiny_checkpoints import make_checkpoint

    def make(**kwargs):
        return make_checkpoint(tmp_path_factory.mktemp("tiny"), **kwargs)

    return make


@pytest.fixture(scope="session")
def tiny_embedder(tmp_path_factory):
    """A converted tiny ColQwen2 model folder (variant "a", fp32), as `ragvl models convert` makes it."""
    _require_reference_stack()
    from tiny_colqwen2 import make_colqwen2_checkpoint

    from ragvl.models.converter.convert import convert

    tmp = tmp_path_factory.mktemp("embedder")
    return convert(make_colqwen2_checkpoint(tmp / "ckpt", variant="a"), tmp / "colqwen2-tiny", log=lambda m: None)



@pytest.fixture(scope="session")
def tiny_answerer(tmp_path_factory):
    """A converted tiny Qwen2-VL answer model folder (variant "a", seed 4, fp32)."""
    _require_reference_stack()
    from tiny_checkpoints import make_checkpoint

    from ragvl.models.converter.convert import convert

    tmp = tmp_path_factory.mktemp("answerer")
    return convert(make_checkpoint(tmp / "ckpt", variant="a", seed=4), tmp / "qwen2-vl-tiny", log=lambda m: None)
