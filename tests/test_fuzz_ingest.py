"""A short, deterministic fuzz run of ingestion (seconds): mutated real PDFs and images through
validation and rendering must render, be refused in one line, or have pages skipped in one line.
The long run is scripts/fuzz_ingest.py; the crashers it found are the regression cases here."""

from __future__ import annotations

from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from fuzz_pdfs import OPS, apply_mutations, check_file, seed_corpus  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SEEDS = seed_corpus(ROOT)

mutations = st.lists(st.tuples(st.sampled_from(OPS), st.floats(0, 1), st.integers(0, 1 << 16),
                               st.binary(max_size=16)), min_size=1, max_size=6)


@settings(max_examples=60, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, len(SEEDS) - 1), muts=mutations)
def test_mutated_documents_never_escape_as_tracebacks(tmp_path, seed, muts):
    name, data = SEEDS[seed]
    path = tmp_path / f"fuzz-{name}"
    path.write_bytes(apply_mutations(data, muts))
    assert check_file(path) in ("rendered", "refused", "pages skipped")


@pytest.mark.parametrize("name, data", SEEDS, ids=[n for n, _ in SEEDS])
def test_seeds_render(tmp_path, name, data):
    (tmp_path / name).write_bytes(data)
    assert check_file(tmp_path / name) == "rendered"
