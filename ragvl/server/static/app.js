// ragvl's page: plain JavaScript, no build step, no network asset. Talks to the JSON API only.
"use strict";
const $ = (id) => document.getElementById(id);
let asking = null; // AbortController of the answer being streamed
let currentQuestion = "";

function escapeHtml(s) {
  return s.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}
function baseName(p) { return p.split(/[\\/]/).pop(); }
function fmtBytes(n) { return n > 1e9 ? (n / 1e9).toFixed(2) + " GB" : n > 1e6 ? (n / 1e6).toFixed(1) + " MB" : Math.round(n / 1e3) + " kB"; }
function fmtSecs(s) { s = Math.round(s); return s >= 60 ? Math.floor(s / 60) + "m" + String(s % 60).padStart(2, "0") + "s" : s + "s"; }

async function api(path, opts = {}) {
  const r = await fetch(path, opts);
  const body = await r.json().catch(() => ({ error: r.statusText }));
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
}

async function loadStatus() {
  try {
    const s = await api("/api/status");
    $("status").textContent = `embedder ${s.embedder || "—"} · answerer ${s.answerer || "—"} · ` +
      `${s.documents} documents, ${s.pages} pages, ${fmtBytes(s.index_bytes)}` +
      (s.answers_waiting ? ` · ${s.answers_waiting} answer(s) in progress` : "");
    const box = $("problems");
    box.innerHTML = s.problems.map((p) => `<p>${escapeHtml(p)}</p>`).join("");
    box.hidden = s.problems.length === 0;
  } catch (e) { $("status").textContent = "status: " + e.message; }
}

async function loadDocuments() {
  const list = $("doc-list");
  try {
    const docs = await api("/api/documents");
    list.innerHTML = "";
    if (!docs.length) list.innerHTML = '<li class="pages">nothing indexed yet</li>';
    for (const d of docs) {
      const li = document.createElement("li");
      li.innerHTML = `<span class="name" title="${escapeHtml(d.path)}">${escapeHtml(baseName(d.path))}</span>` +
        `<span class="pages">${d.pages} p.</span>`;
      const rm = document.createElement("button");
      rm.textContent = "✕"; rm.title = "remove from the index";
      rm.onclick = async () => {
        if (!confirm(`Remove ${d.path} from the index?`)) return;
        try { await api("/api/documents?path=" + encodeURIComponent(d.path), { method: "DELETE" }); }
        catch (e) { alert(e.message); }
        loadDocuments(); loadStatus();
      };
      li.appendChild(rm);
      list.appendChild(li);
    }
  } catch (e) { list.innerHTML = `<li class="pages">${escapeHtml(e.message)}</li>`; }
}

function renderAnswer(text) {
  $("answer").innerHTML = escapeHtml(text).replace(/\[(\d{1,2})\]/g, (m, n) => `<a class="cite" href="#source-${n}" data-n="${n}">[${n}]</a>`);
}

function renderCards(hits) {
  const cards = $("cards");
  cards.innerHTML = "";
  for (const h of hits) {
    const card = document.createElement("div");
    card.className = "card"; card.id = "source-" + h.rank;
    const page = `/api/pages/${h.id}.png`;
    const map = `/api/pages/${h.id}/map.png?q=${encodeURIComponent(currentQuestion)}`;
    card.innerHTML = `<img alt="page ${h.page} of ${escapeHtml(baseName(h.path))}" src="${page}">` +
      `<div class="meta"><div class="doc" title="${escapeHtml(h.path)}"><span class="rank">${h.rank}</span>${escapeHtml(baseName(h.path))}</div>` +
      `<div class="row"><span>page ${h.page}</span><span>score ${h.score.toFixed(2)}</span></div>` +
      `<label><input type="checkbox" class="map-toggle"> where it matched</label></div>`;
    const img = card.querySelector("img");
    card.querySelector(".map-toggle").onchange = (ev) => { img.src = ev.target.checked ? map : page; };
    img.onclick = () => { $("lightbox-img").src = img.src; $("lightbox").hidden = false; };
    cards.appendChild(card);
  }
}

function parseEvents(buffer, onEvent) {
  // Server-sent events over a fetch stream (EventSource cannot POST): blocks end with a blank line.
  const blocks = buffer.split(/\r?\n\r?\n/);
  const rest = blocks.pop();
  for (const block of blocks) {
    let name = "message", data = [];
    for (const line of block.split(/\r?\n/)) {
      if (line.startsWith("event:")) name = line.slice(6).trim();
      else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
    }
    if (data.length) onEvent(name, JSON.parse(data.join("\n")));
  }
  return rest;
}

async function ask(question, k) {
  currentQuestion = question;
  asking = new AbortController();
  let text = "";
  $("ask-btn").disabled = true; $("stop-btn").hidden = false;
  $("answer").hidden = true; $("answer").textContent = ""; $("timings").textContent = ""; $("cards").innerHTML = "";
  $("answer-state").textContent = "Searching…";
  const onEvent = (name, data) => {
    if (name === "queued") $("answer-state").textContent = `Waiting: ${data.position} answer(s) ahead of yours…`;
    else if (name === "started") $("answer-state").textContent = "Searching the pages…";
    else if (name === "retrieved") { renderCards(data); $("answer-state").textContent = "Reading the pages…"; }
    else if (name === "token") { text += data.text; $("answer").hidden = false; renderAnswer(text); $("answer-state").textContent = "Answering…"; }
    else if (name === "sources") renderCards(data);
    else if (name === "done") {
      const t = data.timings;
      $("answer-state").textContent = data.notes && data.notes.length ? "Note: " + data.notes.join(" ") : "";
      // load_s (opening the models' sessions) is apart from every stage; the first token waited for all three.
      $("timings").textContent = `retrieval ${t.retrieval_s.toFixed(2)}s · ` + (t.load_s ? `load ${t.load_s.toFixed(2)}s · ` : "") +
        `first token ${(t.retrieval_s + t.load_s + t.first_token_s).toFixed(2)}s · ` +
        `${data.new_tokens} tokens` + (t.decode_tok_s ? ` at ${t.decode_tok_s.toFixed(1)} tok/s` : "");
      if (!text) { $("answer").hidden = false; $("answer").textContent = "(empty answer)"; }
    } else if (name === "error") $("answer-state").textContent = "Error: " + data.error;
  };
  try {
    const r = await fetch("/api/ask", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ question, k }), signal: asking.signal });
    if (!r.ok) { const b = await r.json().catch(() => ({})); throw new Error(b.error || r.statusText); }
    const reader = r.body.getReader();
    const dec = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf = parseEvents(buf + dec.decode(value, { stream: true }), onEvent);
    }
  } catch (e) {
    $("answer-state").textContent = e.name === "AbortError" ? "Stopped." : "Error: " + e.message;
  } finally {
    asking = null; $("ask-btn").disabled = false; $("stop-btn").hidden = true; loadStatus();
  }
}

async function watchJob(id) {
  const box = $("job"), fill = $("job-fill"), label = $("job-text");
  box.hidden = false; label.className = "job-text";
  for (;;) {
    let j;
    try { j = await api("/api/jobs/" + id); } catch (e) { label.textContent = e.message; label.className = "job-text error"; return; }
    const pct = j.total ? Math.round(100 * j.done / j.total) : (j.state === "done" ? 100 : 0);
    fill.style.width = pct + "%";
    if (j.state === "queued") label.textContent = "waiting for the previous job…";
    else if (j.state === "running") label.textContent = j.total === null ? "looking at the files…" :
      `${j.done}/${j.total} pages` + (j.eta_s != null ? ` · ETA ${fmtSecs(j.eta_s)}` : "") + (j.note ? ` · ${j.note}` : "");
    else if (j.state === "done") {
      const s = j.summary;
      label.textContent = `done: ${s.new.length} new, ${s.changed.length} changed, ${s.unchanged.length} unchanged, ` +
        `${s.failed.length} failed; ${s.pages} pages in ${s.seconds.toFixed(1)}s`;
      if (s.failed.length) { label.textContent += " — " + s.failed.map((f) => f.reason).join("; "); label.className = "job-text error"; }
      loadDocuments(); loadStatus(); return;
    } else { label.textContent = "failed: " + j.error; label.className = "job-text error"; return; }
    await new Promise((res) => setTimeout(res, 500));
  }
}

$("ask-form").onsubmit = (ev) => { ev.preventDefault(); const q = $("question").value.trim(); if (q && !asking) ask(q, Number($("k").value)); };
$("stop-btn").onclick = () => { if (asking) asking.abort(); };
$("add-form").onsubmit = async (ev) => {
  ev.preventDefault();
  const path = $("add-path").value.trim();
  if (!path) return;
  try {
    const j = await api("/api/documents", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ paths: [path] }) });
    $("add-path").value = "";
    watchJob(j.job);
  } catch (e) { $("job").hidden = false; $("job-fill").style.width = "0"; $("job-text").textContent = e.message; $("job-text").className = "job-text error"; }
};
$("answer").onclick = (ev) => {
  const a = ev.target.closest("a.cite");
  if (!a) return;
  const card = $("source-" + a.dataset.n);
  if (card) { card.classList.add("flash"); setTimeout(() => card.classList.remove("flash"), 1200); }
};
$("lightbox").onclick = () => { $("lightbox").hidden = true; };
document.addEventListener("keydown", (ev) => { if (ev.key === "Escape") $("lightbox").hidden = true; });
loadStatus(); loadDocuments();
