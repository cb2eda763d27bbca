"""`ragvl eval` and `--mode` on sample_pdfs/ with tiny models: the numbers are meaningless for
visual retrieval (random weights), the machinery is real. Text mode uses the PDFs' real text
layer, so its hits are real."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ragvl.evaluate import Question, facts_found, key_facts

pytestmark = pytest.mark.slow  # runs ragvl's commands end to end (subprocesses, indexes): left out of the fast loop

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_pdfs"
QUESTIONS = SAMPLES / "questions.json"


def ragvl(*args):
    return subprocess.run([sys.executable, "-m", "ragvl.cli", *map(str, args)], capture_output=True, text=True,
                          env=dict(os.environ), timeout=900)


@pytest.fixture(scope="module")
def db(tmp_path_factory, tiny_embedder):
    db = tmp_path_factory.mktemp("evaldb") / "db"
    r = ragvl("index", SAMPLES, "--db", db, "--embedder", tiny_embedder, "-q")
    assert r.returncode == 0, r.stderr
    return db


@pytest.fixture(scope="module")
def answerer(tiny_answerer):
    return tiny_answerer


def _check_report(rep: dict, k: int, n: int) -> None:
    res = rep["results"]
    assert rep["questions"] == len(res) == n and rep["k"] == k
    for r in res:
        ranks = [h["rank"] for h in r["hits"]]
        assert ranks == list(range(1, len(ranks) + 1)) and len(ranks) == k
        found = [h["rank"] for h in r["hits"] if h["page"] == r["page"] and Path(h["path"]).name == Path(r["file"]).name]
        assert r["rank"] == (found[0] if found else None) and r["hit"] == bool(found)
    assert rep["recall@1"] == pytest.approx(sum(r["rank"] == 1 for r in res) / n)
    assert rep[f"recall@{k}"] == pytest.approx(sum(r["hit"] for r in res) / n)
    assert rep[f"mrr@{k}"] == pytest.approx(sum(1 / r["rank"] for r in res if r["rank"]) / n)


def test_eval_visual_json_and_text(db, tiny_embedder):
    n = len(json.loads(QUESTIONS.read_text()))
    r = ragvl("eval", QUESTIONS, "--db", db, "--embedder", tiny_embedder, "-k", 3, "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["mode"] == "visual"
    _check_report(rep, 3, n)
    # The text layer is real: BM25 finds most English questions' pages; the scanned page (no text
    # layer) never appears in text mode.
    r = ragvl("eval", QUESTIONS, "--db", db, "-k", 5, "--mode", "text", "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    text_hits = [h for q in rep["results"] for h in q["hits"]]
    assert all(not (Path(h["path"]).name == "incident_response_runbook.pdf" and h["page"] == 3)
               for h in text_hits)
    assert rep["recall@1"] >= 0.5
    # Human output: one line per question and the summary.
    r = ragvl("eval", QUESTIONS, "--db", db, "--embedder", tiny_embedder, "--mode", "hybrid")
    lines = r.stdout.strip().splitlines()
    assert r.returncode == 0 and len(lines) == n + 1 and "recall@5" in lines[-1] and "MRR@5" in lines[-1]


def test_eval_answers_reports_key_facts(db, tiny_embedder, answerer, tmp_path):
    qs = json.loads(QUESTIONS.read_text())[:2]
    f = tmp_path / "q.json"
    f.write_text(json.dumps([{**q, "file": str(SAMPLES / q["file"])} for q in qs]))  # absolute file paths work
    r = ragvl("eval", f, "--db", db, "--embedder", tiny_embedder, "--answerer", answerer, "--answers",
              "--answer-k", 1, "-n", 4, "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    _check_report(rep, 5, 2)
    for q, res in zip(qs, rep["results"]):
        assert isinstance(res["answer"], str) and res["keys"] == q["keys"]
        assert res["keys_found"] == facts_found(res["answer"], q["keys"])
    assert 0.0 <= rep["answers_with_all_key_facts"] <= 1.0


def test_search_mode_json_says_which_ranking(db, tiny_embedder):
    r = ragvl("search", "ThermaCore share of smart thermostat shipments", "--db", db, "--embedder", tiny_embedder,
              "--mode", "hybrid", "-k", 4, "--json")
    assert r.returncode == 0, r.stderr
    hits = json.loads(r.stdout)
    assert len(hits) == 4 and all(h["mode"] == "hybrid" for h in hits)
    assert any(h["text_rank"] == 1 for h in hits) and all(h["visual_rank"] or h["text_rank"] for h in hits)
    r = ragvl("search", "ThermaCore", "--db", db, "--mode", "text", "--json")
    hits = json.loads(r.stdout)
    assert r.returncode == 0 and hits[0]["mode"] == "text" and "thermostat" in hits[0]["path"]
    r = ragvl("search", "x", "--db", db, "--mode", "bogus")
    assert r.returncode == 1 and "--mode 'bogus'" in r.stderr


def test_bad_questions_file_is_one_line_error(db, tmp_path):
    bad = tmp_path / "bad.json"
    for content, msg in (("{", "not valid JSON"), ("[]", "non-empty JSON list"),
                         ('[{"question": "q", "file": "a.pdf"}]', "question 1: missing page"),
                         ('[{"question": "q", "file": "a.pdf", "page": 0}]', "page must be")):
        bad.write_text(content)
        r = ragvl("eval", bad, "--db", db)
        assert r.returncode == 1 and msg in r.stderr and str(bad) in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    r = ragvl("eval", tmp_path / "missing.json", "--db", db)
    assert r.returncode == 1 and "cannot read" in r.stderr


def test_key_facts():
    q = Question("q", "f.pdf", 1, answer="Europe, with USD 21.7 million (second: 20.6).")
    assert key_facts(q) == ["21.7", "20.6"]
    assert key_facts(Question("q", "f.pdf", 1, answer="x 1", keys=("Europe",))) == ["Europe"]
    assert facts_found("Revenue was 1,250 units in EUROPE", ["1250", "europe", "21.7"]) == ["1250", "europe"]
