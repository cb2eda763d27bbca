"""A short, deterministic fuzz run of ingestion (seconds): mutated real PDFs and images through
validation and rendering must render, be refused in one line, or have pages skipped in one line.
The long run is scripts/fuzz_ingest.py; the crashers it found are the regression cases here."""

from __future__ import annotations

from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from fuzz_pdfs import OPS, apply_mutations, check_file, seed_corpus  # noqa: E402
from ragvl.errors import RagvlError  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SEEDS = seed_corpus(ROOT)

# Inputs that were tracebacks before their fix, found by scripts/fuzz_ingest.py, kept as files (the
# generated seeds of that run carried a random /ID, so their mutation lists do not replay):
# - bug-*: ValueError "cannot write empty image" (seed 1, 4 of 9,099 executions): a MediaBox
#   billions of points wide rounded the page's height to 0 px; such a page is now skipped, named.
CRASHERS = sorted((ROOT / "tests" / "data" / "fuzz_crashers").glob("*"))

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


@pytest.mark.parametrize("path", CRASHERS, ids=[p.name for p in CRASHERS])
def test_crashers_stay_fixed(path):
    assert check_file(path) == "pages skipped"


def test_absurd_mediabox_page_is_skipped_the_others_render(tmp_path):
    import pymupdf

    from ragvl.ingest import open_pdf

    doc = pymupdf.open()
    for _ in range(3):
        doc.new_page(width=300, height=400)
    doc.xref_set_key(doc[0].xref, "MediaBox", "[0 0 4294967296 842]")  # what the fuzzer found
    doc.xref_set_key(doc[1].xref, "MediaBox", "[0 0 14400 72]")  # a real 200-inch banner: 200:1 is fine
    doc.save(tmp_path / "strip.pdf")
    assert check_file(tmp_path / "strip.pdf", max_side=1600) == "pages skipped"
    with open_pdf(tmp_path / "strip.pdf") as pdf:
        assert pdf.render_page(1).size == (1600, 8)
        with pytest.raises(RagvlError, match=r"strip\.pdf: page 1: page is 4\.29497e\+09 x 842 pt, an aspect ratio over 200"):
            pdf.render_page(0)


def test_crasher_files_are_there():
    assert len(CRASHERS) >= 4  # the parametrized test above would silently run nothing otherwise
