#!/usr/bin/env python
"""ColQwen2 page retrieval on ragvl (onnxruntime fp32 / int8 / int4) vs colpali-engine (torch fp32), same weights.

One run does everything, side by side:

1. builds (or reuses, from --work) the random-weight Qwen2-VL checkpoint of bench_qwen2vl.py
   (default: the real Qwen2-VL-2B shape) and derives a ColQwen2 checkpoint from it: the same
   shards, hard-linked, plus custom_text_proj (128 x hidden, with bias) in a shard of its own,
   config.json with architectures ["ColQwen2"], no lm_head (the 2B's is tied, never stored);
2. converts it with `ragvl.models.converter.convert` once per --dtypes entry, each in a fresh interpreter;
3. runs every engine (colpali-engine fp32, ragvl fp32 / int8 / int4) in its own child process
   on the 12 pages of sample_pdfs/ rendered at ragvl's DEFAULT_DPI (at most 768 visual tokens a
   page, batch size 1) and on the sample questions: load time, seconds per page (the first page
   apart: cold), seconds per query, peak RSS; the vectors go to <work>/colqwen2-vectors-<shape>-<engine>.npz;
4. measures this machine's onnxruntime fp32 MatMul GFLOP/s (bench_qwen2vl.py's "machine" child);
5. in the parent (numpy only): achieved GFLOP/s of each embedder (vision + language-model FLOPs
   counted from the shapes) as a fraction of the MatMul peak, int8 / int4 speed-up over fp32,
   retrieval agreement (exact MaxSim rankings of every engine against ragvl fp32: recall@5 and
   identical top-5s), the float16 storage check (rankings from float16-rounded page vectors);
6. index size: the first ragvl dtype's child also indexes sample_pdfs/ into a fresh LanceDB
   folder with ragvl's Index (reusing the vectors it has just computed for those same page
   images) and reports bytes per page: on disk, vectors (float16), PNG images;
7. prints Markdown tables and writes every number to <work>/results_colqwen2.json.

With random weights the agreement numbers measure numeric fidelity (how far quantization moves
the vectors and the rankings), not retrieval quality.

    python bench/bench_colqwen2.py                    # the 2B shape (long: see bench/README.md)
    python bench/bench_colqwen2.py --config tiny      # seconds; checks the harness end to end
    python bench/bench_colqwen2.py --skip-colpali --dtypes fp32,int8
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from bench_qwen2vl import (DEFAULT_MAX_PIXELS, SHARD_BYTES, _target, add_shared_args, child_main,  # noqa: E402
                           conversion_md, default_init_std, ensure_checkpoint, ensure_converted, floors_md, fmt, gb,
                           over_floor_note,
                           log, proc_status_kb, ratio, resolve_spec, run_child, run_floors, save_results,
                           spec_from_dict, targets_md)

SAMPLES = REPO / "sample_pdfs"
EMBED_MAX_PIXELS = 768 * 28 * 28  # ragvl.models.runtime.colqwen2.MAX_PIXELS = colpali's max_num_visual_tokens=768
MAX_VISUAL_TOKENS = 768
EMBED_DIM = 128  # custom_text_proj's output width
TOP_K = 5
VECTOR_BUDGET = 200_000  # target: at most 200 KB (1 KB = 1000 bytes) of float16 vectors per page
CKPT_FORMAT = 2  # bump when the ColQwen2 derivation changes


# =============================================================================================
# Shared with bench_ask.py: the sample pages and questions
# =============================================================================================


def sample_pdfs() -> list[Path]:
    """The sample PDFs in the order ragvl's indexer walks them (sorted resolved paths)."""
    from ragvl.ingest import find_pdfs

    return find_pdfs([SAMPLES])


def render_pages(limit: int | None = None, only: list[tuple[str, int]] | None = None):
    """[(file name, 1-based page, path, RGB PIL image)] of the sample pages at DEFAULT_DPI, as the
    indexer renders them. `only`: just these (file name, page) pairs, in that order."""
    from ragvl.ingest import DEFAULT_DPI, open_pdf

    pages = []
    for pdf in sample_pdfs():
        with open_pdf(pdf) as doc:
            for i in range(doc.page_count):
                if only is None or (pdf.name, i + 1) in only:
                    pages.append((pdf.name, i + 1, str(pdf), doc.render_page(i, DEFAULT_DPI)))
    if only is not None:
        pages.sort(key=lambda p: only.index((p[0], p[1])))
    return pages[:limit] if limit else pages


def sample_questions() -> list[dict]:
    return json.loads((SAMPLES / "questions.json").read_text())


def page_grid(image, max_pixels: int) -> list[int]:
    """The (t, h, w) patch grid of a page image at max_pixels (Qwen2-VL's smart_resize)."""
    from ragvl.models.runtime.preprocess import ImageConfig, smart_resize

    cfg = ImageConfig(max_pixels=max_pixels)
    h, w = smart_resize(image.height, image.width, cfg.factor, cfg.min_pixels, cfg.max_pixels)
    return [1, h // cfg.patch_size, w // cfg.patch_size]


def dir_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())


# =============================================================================================
# Child tasks
# =============================================================================================


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def task_colqwen2_ckpt(src: str, out: str, hidden_size: int, std: float, seed: int, max_pixels: int) -> dict:
    """A ColQwen2 checkpoint from the Qwen2-VL one: its shards hard-linked (same tensors, no extra
    disk), custom_text_proj in a shard of its own, an index naming every tensor, config.json with
    architectures ["ColQwen2"], a ColQwen2Processor preprocessor config, the tokenizer files."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    from tiny_checkpoints import HUB_MIN_PIXELS, _write_json
    from tiny_colqwen2 import colqwen2_preprocessor_config

    t0 = time.perf_counter()
    src_d, out_d = Path(src), Path(out)
    tmp = out_d.with_name(f".{out_d.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    weight_map: dict[str, str] = {}
    total = 0
    for f in sorted(src_d.glob("*.safetensors")):
        # transformers loads a "model.safetensors" alone when there is one, ignoring the index
        name = "model-qwen2vl.safetensors" if f.name == "model.safetensors" else f.name
        _link_or_copy(f, tmp / name)
        with safe_open(str(f), "pt") as h:
            for k in h.keys():
                weight_map[k] = name
                total += 2 * math.prod(h.get_slice(k).get_shape())  # bf16
    if "lm_head.weight" in weight_map:
        raise SystemExit("the Qwen2-VL checkpoint stores an lm_head (untied config): ColQwen2 has none; "
                         "use a tied shape (2b, tiny)")
    gen = torch.Generator().manual_seed(seed + 2)  # as testkit/tiny_colqwen2.colqwen2_hub_tensors
    proj = {"custom_text_proj.weight": (std * torch.randn(EMBED_DIM, hidden_size, generator=gen)).to(torch.bfloat16),
            "custom_text_proj.bias": (0.1 * torch.randn(EMBED_DIM, generator=gen)).to(torch.bfloat16)}
    save_file(proj, str(tmp / "custom_text_proj.safetensors"), metadata={"format": "pt"})
    weight_map.update({k: "custom_text_proj.safetensors" for k in proj})
    total += 2 * sum(t.numel() for t in proj.values())
    _write_json(tmp / "model.safetensors.index.json",
                {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))})
    config = json.loads((src_d / "config.json").read_text())
    config["architectures"] = ["ColQwen2"]
    _write_json(tmp / "config.json", config)
    _write_json(tmp / "preprocessor_config.json", colqwen2_preprocessor_config(HUB_MIN_PIXELS, max_pixels))
    for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "chat_template.json"):
        if (src_d / f).exists():
            shutil.copy2(src_d / f, tmp / f)
    shutil.rmtree(out_d, ignore_errors=True)
    os.replace(tmp, out_d)
    return {"derive_s": round(time.perf_counter() - t0, 2), "tensors": len(weight_map), "bytes": total}


def _save_vectors(path: str, pages: list, queries: list) -> None:
    import numpy as np

    def pack(mats):
        offs = np.concatenate([[0], np.cumsum([len(m) for m in mats])]).astype(np.int64)
        return np.concatenate(mats).astype(np.float32), offs

    pv, po = pack(pages)
    qv, qo = pack(queries)
    np.savez(path, page_vectors=pv, page_offsets=po, query_vectors=qv, query_offsets=qo)


def _image_key(image) -> str:
    return hashlib.sha1(image.tobytes()).hexdigest() + f"-{image.width}x{image.height}"


def _embed_pages(embed_one, pages) -> tuple[list, list[dict]]:
    """Embed each page alone (batch size 1), timing each call."""
    vecs, recs = [], []
    for i, (name, page, _, image) in enumerate(pages):
        t = time.perf_counter()
        v = embed_one(image)
        dt = time.perf_counter() - t
        vecs.append(v)
        recs.append({"file": name, "page": page, "size": [image.width, image.height], "seconds": round(dt, 5),
                     "n_vectors": int(len(v)), "grid_thw": page_grid(image, EMBED_MAX_PIXELS)})
        log(f"  page {i + 1}/{len(pages)} ({name} p{page}): {dt:.3f}s, {len(v)} vectors")
    return vecs, recs


def task_ragvl(folder: str, threads: int, pages: int | None, queries: list[str], vec_out: str,
               index_db: str | None = None) -> dict:
    import onnxruntime as ort

    from ragvl.models.runtime.colqwen2 import MAX_PIXELS, ColQwen2

    assert MAX_PIXELS == EMBED_MAX_PIXELS, (MAX_PIXELS, EMBED_MAX_PIXELS)
    t0 = time.perf_counter()
    # Sessions open lazily; open them all here, as the reference loads its weights before timing.
    m = ColQwen2(folder, threads=threads).open()
    load_s = time.perf_counter() - t0
    rss_loaded = gb(proc_status_kb("VmRSS"))
    log(f"  loaded in {load_s:.2f}s, RSS {rss_loaded} GB")
    imgs = render_pages(pages)
    vecs, recs = _embed_pages(lambda im: m.embed_images([im])[0], imgs)
    t = time.perf_counter()
    qvecs = m.embed_queries(queries)
    q_s = time.perf_counter() - t
    _save_vectors(vec_out, vecs, qvecs)
    res: dict[str, Any] = {"engine": "ragvl", "dtype": m.manifest["dtype"], "load_s": round(load_s, 3),
                           "rss_after_load_gb": rss_loaded, "onnxruntime": ort.__version__, "threads": threads,
                           "embedder_id": m.id, "pages": recs, "queries_s": round(q_s, 4),
                           "query_tokens": [int(len(q)) for q in qvecs]}
    if index_db:
        res["index"] = _index_sample_pdfs(m, folder, Path(index_db), {_image_key(p[3]): v for p, v in zip(imgs, vecs)},
                                          queries)
    return res


def _index_sample_pdfs(m, folder: str, db: Path, known: dict, queries: list[str]) -> dict:
    """Index sample_pdfs/ with ragvl's Index into a fresh LanceDB folder, the already-loaded model
    serving as its embedder; pages embedded above are served from `known` (same model, same
    image, same vectors), any other page is embedded for real. Then search every query."""
    from ragvl import Index
    from ragvl.store.page_store import PageStore

    shutil.rmtree(db, ignore_errors=True)
    embed = m.embed_images
    served = {"reused": 0, "embedded": 0}

    def embed_images(images, batch_size: int = 1):
        out = []
        for im in images:
            k = _image_key(im)
            served["reused" if k in known else "embedded"] += 1
            out.append(known[k] if k in known else embed([im])[0])
        return out

    m.embed_images = embed_images
    idx = Index(db, embedder=folder, log=lambda msg: log(f"  index: {msg}"))
    idx._embedder = m  # the model loaded above (the Index would load a second copy, at default threads)
    t = time.perf_counter()
    summary = idx.index([SAMPLES], progress=False)
    index_s = time.perf_counter() - t
    total = dir_bytes(db)  # before any search writes its cache folder
    tab = PageStore(db).scan(["doc_path", "page", "n_vectors", "image_png"])
    n_pages = tab.num_rows
    n_vectors = [int(x) for x in tab["n_vectors"].to_pylist()]
    png = [len(b) for b in tab["image_png"].to_pylist()]
    t = time.perf_counter()
    hits = [[[Path(h.path).name, h.page] for h in idx.search(q, TOP_K)] for q in queries]
    search_s = (time.perf_counter() - t) / max(len(queries), 1)
    return {"db": str(db), "pages": n_pages, "index_s": round(index_s, 3), "summary": summary.as_dict(),
            "served": served, "total_bytes": total, "vector_bytes_fp16": sum(n_vectors) * EMBED_DIM * 2,
            "png_bytes": sum(png), "n_vectors": n_vectors, "search_s_per_query": round(search_s, 4),
            "search_top5": hits}


def task_colpali(ckpt: str, threads: int, pages: int | None, queries: list[str], vec_out: str, attn: str) -> dict:
    import colpali_engine
    import torch
    import transformers
    from colpali_engine.models import ColQwen2

    from tiny_colqwen2 import colpali_embed_images, colpali_embed_queries, make_colqwen2_processor

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    # As testkit/tiny_colqwen2.load_colqwen2 (fp32, checked load report), with a choice of attention.
    model, info = ColQwen2.from_pretrained(ckpt, dtype=torch.float32, attn_implementation=attn,
                                           output_loading_info=True)
    bad = {k: sorted(v)[:6] for k, v in info.items() if k != "error_msgs" and v}
    if bad or info.get("error_msgs"):
        raise SystemExit(f"ColQwen2.from_pretrained({ckpt}) did not load cleanly: {bad} {info.get('error_msgs')}")
    model = model.eval()
    processor = make_colqwen2_processor(ckpt, max_num_visual_tokens=MAX_VISUAL_TOKENS)
    load_s = time.perf_counter() - t0
    rss_loaded = gb(proc_status_kb("VmRSS"))
    log(f"  loaded in {load_s:.2f}s, RSS {rss_loaded} GB (attention: {attn})")
    imgs = render_pages(pages)
    vecs, recs = _embed_pages(lambda im: colpali_embed_images(model, processor, [im], batch_size=1)[0], imgs)
    t = time.perf_counter()
    qvecs = colpali_embed_queries(model, processor, queries, batch_size=1)
    q_s = time.perf_counter() - t
    _save_vectors(vec_out, vecs, qvecs)
    return {"engine": "colpali-engine", "attn_implementation": attn, "load_s": round(load_s, 3),
            "rss_after_load_gb": rss_loaded, "torch": torch.__version__, "transformers": transformers.__version__,
            "colpali_engine": getattr(colpali_engine, "__version__", "?"), "threads": torch.get_num_threads(),
            "pages": recs, "queries_s": round(q_s, 4), "query_tokens": [int(len(q)) for q in qvecs]}


TASKS = {"colqwen2_ckpt": task_colqwen2_ckpt, "ragvl": task_ragvl, "colpali": task_colpali}


# =============================================================================================
# FLOPs
# =============================================================================================


def embed_items(spec, grid_thw: list[int], seq: int) -> list[dict]:
    """The matmuls of embedding one page (bench/machine.py items): the vision tower, the language
    model over the whole document prompt of `seq` tokens (prefill without lm_head: ColQwen2 has
    none), and custom_text_proj on every token (seq x hidden x 128, kept fp32 by the converter)."""
    from machine import _lin, prefill_items, vision_items

    return (vision_items(spec, grid_thw) + prefill_items(spec, seq, lm_head=False, many_rows=True)
            + [_lin("projection", "custom_text_proj", seq, spec.hidden_size, EMBED_DIM, 1, quantized=False)])


def embed_flops(spec, grid_thw: list[int], seq: int) -> dict[str, float]:
    """FLOPs of embedding one page by group (vision groups, language-model linear / attention,
    projection) and total."""
    from machine import group_flops

    return group_flops(embed_items(spec, grid_thw, seq))


# =============================================================================================
# Orchestration and derived numbers
# =============================================================================================


def ensure_colqwen2_checkpoint(work: Path, qwen_ckpt: Path, spec, init_std: float, seed: int) -> tuple[Path, dict]:
    d = work / ("ckpt-colqwen2-" + qwen_ckpt.name.removeprefix("ckpt-"))
    want = {"source": qwen_ckpt.name, "seed": seed, "init_std": init_std, "max_pixels": EMBED_MAX_PIXELS,
            "format": CKPT_FORMAT}
    marker = d / "bench_colqwen2_checkpoint.json"
    if marker.exists():
        info = json.loads(marker.read_text())
        if {k: info.get(k) for k in want} == want:
            log(f"colqwen2 checkpoint: reusing {d}")
            return d, {**info, "cached": True}
    log(f"colqwen2 checkpoint: {qwen_ckpt.name} + custom_text_proj -> {d.name}")
    res = run_child("colqwen2_ckpt", {"src": str(qwen_ckpt), "out": str(d), "hidden_size": spec.hidden_size,
                                      "std": init_std, "seed": seed, "max_pixels": EMBED_MAX_PIXELS}, work,
                    script=__file__)
    if "error" in res:
        raise SystemExit("deriving the ColQwen2 checkpoint failed")
    info = {**want, **res}
    marker.write_text(json.dumps(info, indent=2))
    return d, {**info, "cached": False}


def vectors_path(work: Path, spec, engine: str) -> Path:
    return work / f"colqwen2-vectors-{spec.name}-{engine}.npz"


def load_vectors(path: Path):
    import numpy as np

    z = np.load(path)

    def unpack(v, o):
        return [v[o[i]:o[i + 1]] for i in range(len(o) - 1)]

    return unpack(z["page_vectors"], z["page_offsets"]), unpack(z["query_vectors"], z["query_offsets"])


def rankings(queries, pages):
    """(scores (n_queries, n_pages), order (n_queries, n_pages)) by exact MaxSim, best first."""
    import numpy as np

    from ragvl.retrieval.maxsim import maxsim_scores

    scores = np.stack([maxsim_scores(q, pages) for q in queries])
    return scores, np.argsort(-scores, axis=1, kind="stable")


def agreement(order, ref_order, k: int = TOP_K) -> dict:
    import numpy as np

    k = min(k, len(ref_order[0]))  # fewer pages than k (--pages): the whole ranking
    rec = [len(set(a[:k]) & set(b[:k])) / k for a, b in zip(order, ref_order)]
    same = [list(a[:k]) == list(b[:k]) for a, b in zip(order, ref_order)]
    return {"recall_at_k": float(np.mean(rec)), "identical_top_k": float(np.mean(same)),
            "top1_equal": float(np.mean([a[0] == b[0] for a, b in zip(order, ref_order)]))}


def mean_cosine(a_pages, b_pages) -> float | None:
    import numpy as np

    if [len(p) for p in a_pages] != [len(p) for p in b_pages]:
        return None
    a, b = np.concatenate(a_pages), np.concatenate(b_pages)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return float(cos.mean())


def derive(spec, machine: dict, engines: dict[str, dict], work: Path) -> dict:
    import numpy as np

    from machine import stage_floor

    d: dict[str, Any] = {"engines": {}}
    ok = {k: e for k, e in engines.items() if "error" not in e}
    for name, e in ok.items():
        recs = e["pages"]
        x: dict[str, Any] = {}
        flops = [embed_flops(spec, r["grid_thw"], r["n_vectors"])["total"] for r in recs]
        secs = [r["seconds"] for r in recs]
        x["page_s_cold"] = secs[0]
        warm = slice(1, None) if len(secs) > 1 else slice(0, None)
        x["page_s_warm"] = float(np.mean(secs[warm]))
        x["page_s_warm_median"] = float(np.median(secs[warm]))
        x["pages_per_min_warm"] = 60.0 / x["page_s_warm"]
        x["page_gflop_mean"] = float(np.mean(flops)) / 1e9
        x["gflops_warm"] = sum(flops[warm]) / sum(secs[warm]) / 1e9
        # Floor of the warm pages: each page's matmuls at the rates measured for their shapes.
        fdtype = "fp32" if name == "colpali" else name.split("-", 1)[1]
        fls = [stage_floor(embed_items(spec, r["grid_thw"], r["n_vectors"]), fdtype, machine) for r in recs[warm]]
        if fls and all(fls):
            x["floor_s_warm"] = float(np.mean([f["floor_s"] for f in fls]))
            x["frac_of_floor"] = ratio(x["floor_s_warm"], x["page_s_warm"])
            x["floor_by_group_s"] = {g: float(np.mean([f["by_group"][g] for f in fls])) for g in fls[0]["by_group"]}
        x["query_s"] = e["queries_s"] / max(len(e["query_tokens"]), 1)
        d["engines"][name] = x

    # Rankings by exact MaxSim over the pages every engine embedded.
    vecs = {k: load_vectors(vectors_path(work, spec, k)) for k in ok}
    orders, scores = {}, {}
    for k, (pages, queries) in vecs.items():
        scores[k], orders[k] = rankings(queries, pages)
    for ref in ("ragvl-fp32", "colpali"):
        if ref not in vecs:
            continue
        for k in vecs:
            if k == ref:
                continue
            x = d["engines"][k]
            tag = "fp32" if ref == "ragvl-fp32" else "colpali"
            for key, v in agreement(orders[k], orders[ref]).items():
                x[f"{key}_vs_{tag}"] = v
            x[f"cosine_vs_{tag}"] = mean_cosine(vecs[k][0], vecs[ref][0])
            x[f"max_abs_score_diff_vs_{tag}"] = float(np.abs(scores[k] - scores[ref]).max())
            if [len(p) for p in vecs[k][0]] == [len(p) for p in vecs[ref][0]]:
                x[f"max_abs_vector_diff_vs_{tag}"] = float(np.abs(np.concatenate(vecs[k][0]) -
                                                                  np.concatenate(vecs[ref][0])).max())
    if "ragvl-fp32" in vecs:
        s = np.sort(scores["ragvl-fp32"], axis=1)[:, ::-1]
        if s.shape[1] > TOP_K:
            gaps = s[:, TOP_K - 1] - s[:, TOP_K]
            d["fp32_top5_margin"] = {"min": float(gaps.min()), "median": float(np.median(gaps)),
                                     "score_range_median": float(np.median(s[:, 0] - s[:, -1]))}

    # float16 storage: ragvl fp32's page vectors rounded to float16 vs themselves in float32.
    fp16: dict[str, Any] = {}
    for k in ("ragvl-fp32", "colpali"):
        if k in vecs:
            pages, queries = vecs[k]
            s16, o16 = rankings(queries, [p.astype(np.float16) for p in pages])
            fp16[k] = {**agreement(o16, orders[k]), "max_abs_score_diff": float(np.abs(s16 - scores[k]).max())}
    d["float16"] = fp16

    # The index built by the first ragvl engine: bytes per page, and its search against exact MaxSim.
    idx_engine = next((k for k, e in ok.items() if "index" in e), None)
    if idx_engine:
        ix = ok[idx_engine]["index"]
        n = max(ix["pages"], 1)
        d["index"] = {"engine": idx_engine, "pages": ix["pages"], "total_per_page": ix["total_bytes"] / n,
                      "vectors_fp16_per_page": ix["vector_bytes_fp16"] / n, "png_per_page": ix["png_bytes"] / n,
                      "other_per_page": (ix["total_bytes"] - ix["vector_bytes_fp16"] - ix["png_bytes"]) / n,
                      "vectors_per_page_mean": float(np.mean(ix["n_vectors"])) if ix["n_vectors"] else None,
                      "index_s": ix["index_s"], "search_s_per_query": ix["search_s_per_query"],
                      "served": ix["served"]}
        pages, queries = vecs[idx_engine]
        recs = ok[idx_engine]["pages"]
        if len(recs) == ix["pages"]:  # the index holds exactly the pages embedded above
            labels = [[r["file"], r["page"]] for r in recs]
            _, o16 = rankings(queries, [p.astype(np.float16) for p in pages])
            want = [[labels[j] for j in row[:TOP_K]] for row in o16]
            d["index"]["search_equals_exact_fp16"] = float(np.mean([a == b for a, b in zip(ix["search_top5"], want)]))

    fp32, int8 = d["engines"].get("ragvl-fp32", {}), d["engines"].get("ragvl-int8", {})
    for k, x in d["engines"].items():
        if k.startswith("ragvl-") and fp32:
            x["speedup_vs_fp32"] = ratio(fp32.get("page_s_warm"), x.get("page_s_warm"))
        if "colpali" in d["engines"] and k != "colpali":
            x["speedup_vs_colpali"] = ratio(d["engines"]["colpali"].get("page_s_warm"), x.get("page_s_warm"))
    d["targets"] = {
        "fp32_ge_80pct_floor": _target(fp32.get("frac_of_floor"), 0.80),
        "int8_speedup_ge_1_7": _target(int8.get("speedup_vs_fp32"), 1.7),
        "int8_recall5_ge_0_95": _target(int8.get("recall_at_k_vs_fp32"), 0.95),
        "vectors_per_page_le_200kb": None if "index" not in d else
        {"value": d["index"]["vectors_fp16_per_page"], "threshold": VECTOR_BUDGET,
         "met": d["index"]["vectors_fp16_per_page"] <= VECTOR_BUDGET},
    }
    return d


# =============================================================================================
# Tables
# =============================================================================================


def tables(spec, machine, engines, convs, derived, args, n_queries: int) -> str:
    cols = [("colpali", "colpali-engine fp32")] + [(f"ragvl-{dt}", f"ragvl {dt}") for dt in args.dtypes]
    cols = [(k, t) for k, t in cols if k in engines]
    dx = derived["engines"]
    head = ["per page / per engine"] + [t + (f" (failed: {engines[k]['error']})" if "error" in engines[k] else "")
                                        for k, t in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def row(label, get, spec_=".3f", suffix=""):
        cells = [label]
        for k, _ in cols:
            e = engines[k]
            cells.append(fmt(None if "error" in e else get(k, e, dx.get(k, {})), spec_, suffix))
        lines.append("| " + " | ".join(cells) + " |")

    row("load (s)", lambda k, e, x: e.get("load_s"), ".2f")
    row("page embed, first page (s)", lambda k, e, x: x.get("page_s_cold"))
    row("page embed, warm (s/page)", lambda k, e, x: x.get("page_s_warm"))
    row("pages per minute, warm", lambda k, e, x: x.get("pages_per_min_warm"), ".1f")
    row("speed-up over ragvl fp32 (x)", lambda k, e, x: x.get("speedup_vs_fp32"), ".2f")
    row("speed-up over colpali-engine (x)", lambda k, e, x: x.get("speedup_vs_colpali"), ".2f")
    row("query embed (s/query)", lambda k, e, x: x.get("query_s"), ".4f")
    row("peak RSS (GB)", lambda k, e, x: e.get("peak_rss_gb"), ".2f")
    row("RSS after load (GB)", lambda k, e, x: e.get("rss_after_load_gb"), ".2f")
    row("GFLOP/s, warm", lambda k, e, x: x.get("gflops_warm"), ".1f")
    row("floor, warm (s/page)", lambda k, e, x: x.get("floor_s_warm"))
    row("% of floor", lambda k, e, x: None if x.get("frac_of_floor") is None else 100 * x["frac_of_floor"],
        ".1f", "%")
    row("mean cosine of page vectors to ragvl fp32", lambda k, e, x: x.get("cosine_vs_fp32"), ".5f")
    row("recall@5 vs ragvl fp32", lambda k, e, x: x.get("recall_at_k_vs_fp32"), ".3f")
    row("identical top-5 vs ragvl fp32", lambda k, e, x: x.get("identical_top_k_vs_fp32"), ".3f")
    row("max abs score diff vs ragvl fp32", lambda k, e, x: x.get("max_abs_score_diff_vs_fp32"), ".4f")
    row("recall@5 vs colpali-engine", lambda k, e, x: x.get("recall_at_k_vs_colpali"), ".3f")
    row("identical top-5 vs colpali-engine", lambda k, e, x: x.get("identical_top_k_vs_colpali"), ".3f")
    row("max abs vector diff vs colpali-engine", lambda k, e, x: x.get("max_abs_vector_diff_vs_colpali"), ".2e")

    e0 = next((engines[k] for k, _ in cols if "error" not in engines[k]), {})
    recs = e0.get("pages", [])
    nv = [r["n_vectors"] for r in recs]
    grids = sorted({tuple(r["grid_thw"]) for r in recs})
    gflop = next((x.get("page_gflop_mean") for x in dx.values() if x.get("page_gflop_mean")), None)
    out = [f"ColQwen2, {spec.name} shape + 128-d projection (random weights, init std {args.init_std}), "
           f"{args.threads} thread(s). "
           f"{len(recs)} pages of sample_pdfs/ at DEFAULT_DPI, batch size 1, at most {MAX_VISUAL_TOKENS} visual "
           f"tokens a page (grids {', '.join(str(list(g)) for g in grids)}); "
           f"{min(nv) if nv else '?'}-{max(nv) if nv else '?'} vectors a page (document prompt tokens, all kept); "
           f"{fmt(gflop, '.1f')} GFLOP counted per page; {n_queries} queries. First page = cold (first call in a "
           f"fresh process); warm = mean over pages 2..{len(recs)}. Rankings: exact MaxSim of every query over "
           f"the {len(recs)} pages, top-{TOP_K}; with random weights they measure numeric fidelity, not "
           f"retrieval quality."
           + (f" colpali-engine attention: {engines['colpali'].get('attn_implementation')}."
              if "colpali" in engines and "error" not in engines["colpali"] else ""), "",
           *lines, ""]
    m = derived.get("fp32_top5_margin")
    if m:
        out += [f"ragvl fp32 score gap between ranks 5 and 6: min {m['min']:.4f}, median {m['median']:.4f} "
                f"(median best-to-worst spread {m['score_range_median']:.4f}); a quantized engine whose scores move "
                f"by more than the gap can swap those pages.", ""]

    parts = {"main": "\n".join(out) + over_floor_note({k: x.get("frac_of_floor") for k, x in dx.items()})}
    out = []
    fp16 = derived.get("float16") or {}
    if fp16:
        out += ["| float16 storage (page vectors rounded to float16 vs float32) | identical top-5 | recall@5 "
                "| top-1 equal | max abs score diff |", "|---|---|---|---|---|"]
        for k, v in fp16.items():
            out.append(f"| {'ragvl fp32' if k == 'ragvl-fp32' else 'colpali-engine fp32'} vectors | "
                       f"{v['identical_top_k']:.3f} | {v['recall_at_k']:.3f} | {v['top1_equal']:.3f} | "
                       f"{v['max_abs_score_diff']:.5f} |")
        out.append("")

    parts["float16"] = "\n".join(out) or "Not measured."
    out = []
    ix = derived.get("index")
    if ix:
        out += [f"| index ({ix['pages']} pages, ragvl Index, LanceDB; vectors of {ix['engine']}) | bytes per page |",
                "|---|---|",
                f"| total on disk | {ix['total_per_page']:,.0f} |",
                f"| vectors, float16 (n_vectors x 128 x 2; {fmt(ix['vectors_per_page_mean'], '.1f')} vectors a page) "
                f"| {ix['vectors_fp16_per_page']:,.0f} |",
                f"| page images, PNG | {ix['png_per_page']:,.0f} |",
                f"| remainder: total - vectors - PNG (other columns, metadata; negative when LanceDB's encoding "
                f"stores the data in fewer bytes than their raw size) | {ix['other_per_page']:,.0f} |",
                f"| index() wall time, s/page ({ix['served']['reused']} pages' vectors reused from the timing run, "
                f"{ix['served']['embedded']} embedded) | "
                f"{ix['index_s'] / max(ix['pages'], 1):.3f} |",
                f"| Index.search, s/query (query embedding + exact search) | {ix['search_s_per_query']:.4f} |",
                f"| Index.search top-5 == exact MaxSim top-5 of float16 vectors | "
                f"{fmt(ix.get('search_equals_exact_fp16'), '.3f')} |", ""]

    parts["index"] = "\n".join(out) or "Not measured (--skip-index)."
    parts["floors"] = floors_md(machine)
    parts["conversion"] = conversion_md(convs, args.dtypes)
    parts["targets"] = targets_md(derived["targets"], (
        ("fp32_ge_80pct_floor", "ragvl fp32 embedder, fraction of its MatMul floor", 100, "%", ".1f"),
        ("int8_speedup_ge_1_7", "ragvl int8 speed-up over fp32 (s/page)", 1, "x", ".2f"),
        ("int8_recall5_ge_0_95", "ragvl int8 recall@5 vs fp32", 1, "", ".3f"),
        ("vectors_per_page_le_200kb", "float16 vectors per page (KB, 1 KB = 1000 B)", 1e-3, " KB", ".1f")))
    return parts


# =============================================================================================
# main
# =============================================================================================


def build_parser() -> argparse.ArgumentParser:
    """The command line (bench/assemble.py documents it from here)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="2b", choices=("2b", "tiny"),
                   help="'2b' (Qwen2-VL-2B shape + 128-d projection, default) or 'tiny' (tests' variant a)")
    p.add_argument("--skip-colpali", action="store_true", help="do not run colpali-engine")
    p.add_argument("--attn", default="sdpa", choices=("sdpa", "eager"),
                   help="colpali-engine / transformers attention implementation (default sdpa)")
    p.add_argument("--pages", type=int, default=None,
                   help="embed only the first N sample pages (default: all 12; the index always holds all)")
    p.add_argument("--queries", type=int, default=12, help="questions of sample_pdfs/questions.json (default 12)")
    p.add_argument("--skip-index", action="store_true", help="do not build the LanceDB index (no bytes per page)")
    add_shared_args(p)
    return p


def parse_args(argv=None):
    p = build_parser()
    args = p.parse_args(argv)
    if not args.child:
        args.dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
        bad = [d for d in args.dtypes if d not in ("fp32", "int8", "int8-nbits", "int4")]
        if bad:
            p.error(f"--dtypes: unknown {bad}; expected fp32, int8, int8-nbits (int8 with MatMulNBits in "
                    f"every graph, ragvl's kernel before the rows kernel), int4")
        if args.pages is not None and args.pages < 1:
            p.error("--pages must be >= 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        child_main(args.child, json.loads(args.child_args), args.child_out, tasks=TASKS)
        return 0
    args.init_std = default_init_std(args.config, args.init_std)
    spec_d = resolve_spec(args.config, None, args.init_std)
    spec = spec_from_dict(spec_d)
    from results import Run

    run = Run("bench_colqwen2.py", "colqwen2" if args.config == "2b" else f"colqwen2-{spec.name}", threads=args.threads)
    work = args.work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    log(f"ColQwen2 on the {spec.name} shape: hidden {spec.hidden_size}, {spec.num_layers} layers, "
        f"vision {spec.vision_depth}x{spec.vision_embed_dim}; threads {args.threads}; work {work}")
    questions = [q["question"] for q in sample_questions()][:args.queries]

    # The Qwen2-VL checkpoint exactly as bench_qwen2vl.py builds it by default (same folder, reused).
    qwen_ckpt, qwen_info = ensure_checkpoint(work, spec_d, DEFAULT_MAX_PIXELS, args.seed, SHARD_BYTES)
    ckpt, ckpt_info = ensure_colqwen2_checkpoint(work, qwen_ckpt, spec, args.init_std, args.seed)
    convs, folders = {}, {}
    for dt in args.dtypes:  # a freshly derived checkpoint invalidates conversions cached under its name
        folders[dt], convs[dt] = ensure_converted(work, ckpt, dt, args.reconvert or not ckpt_info["cached"])

    engines: dict[str, dict] = {}
    if not args.skip_colpali:
        log(f"engine colpali-engine fp32 ({args.attn})")
        engines["colpali"] = run_child("colpali", {"ckpt": str(ckpt), "threads": args.threads, "pages": args.pages,
                                                   "queries": questions, "attn": args.attn,
                                                   "vec_out": str(vectors_path(work, spec, "colpali"))}, work,
                                   script=__file__)
    for i, dt in enumerate(args.dtypes):
        name = f"ragvl-{dt}"
        if "error" in convs[dt]:
            engines[name] = {"error": "conversion failed"}
            continue
        log(f"engine {name}")
        index_db = None if (args.skip_index or i > 0) else str(work / f"colqwen2-index-{spec.name}")
        engines[name] = run_child("ragvl", {"folder": str(folders[dt]), "threads": args.threads, "pages": args.pages,
                                            "queries": questions, "vec_out": str(vectors_path(work, spec, name)),
                                            "index_db": index_db}, work, script=__file__)

    # The floors at the shapes the engines embedded (each distinct page grid and prompt length).
    shapes = {(tuple(r["grid_thw"]), r["n_vectors"]) for e in engines.values() if "error" not in e
              for r in e["pages"]}
    machine = run_floors(work, args, [embed_items(spec, list(g), n) for g, n in sorted(shapes)], mem_gb=0)

    derived = derive(spec, machine, engines, work)
    md = tables(spec, machine, engines, convs, derived, args, len(questions))
    results = {
        "spec": {**dataclasses.asdict(spec), "vocab_size": spec.vocab_size, "head_dim": spec.head_dim,
                 "embed_dim": EMBED_DIM},
        "settings": {"threads": args.threads, "max_pixels": EMBED_MAX_PIXELS, "pages": args.pages,
                     "queries": questions, "top_k": TOP_K, "attn": None if args.skip_colpali else args.attn},
        "checkpoint": {"qwen2vl": {"path": str(qwen_ckpt), **qwen_info}, "colqwen2": {"path": str(ckpt), **ckpt_info}},
        "conversions": convs,
        "machine": machine,
        "engines": engines,
        "derived": derived,
    }
    return save_results(run, md, results, args)


if __name__ == "__main__":
    sys.exit(main())
