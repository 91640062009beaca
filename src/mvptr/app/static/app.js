// The search page: one sentence -> ranked images; one image -> its phrases grounded as boxes,
// and answers to questions when the server has a VQA model. Plain DOM, no build step; every
// text from the server goes in through textContent. The query lives in the URL (?q=): a link
// to the page shows its results, and Back returns to the previous query.
"use strict";

const COLORS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324"];
const $ = (selector) => document.querySelector(selector);
const SVG = "http://www.w3.org/2000/svg";
let current = { query: "", image: null };

function element(tag, className, text) {
  const el = document.createElement(tag);
  if (className) el.className = className;
  if (text !== undefined) el.textContent = text;
  return el;
}

function errorText(detail, fallback) {
  if (Array.isArray(detail)) return detail.map((d) => `${(d.loc || []).slice(-1)[0]}: ${d.msg}`).join("; ");
  return detail || fallback;
}

async function api(url, options) {
  const response = await fetch(url, options);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(errorText(body.detail, `${response.status} ${response.statusText}`));
  return body;
}

async function loadHealth() {
  try {
    const h = await api("/api/health");
    const recall = h.coarse !== "exact" && typeof h.recall === "number" ? ` (recall@10 ${h.recall.toFixed(3)})` : "";
    $("#about").textContent = `${h.images} images · coarse stage: ${h.coarse}${recall}` +
      (h.vqa ? " · answers questions" : "");
    $("#ask").hidden = !h.vqa;
  } catch (err) {
    $("#about").textContent = `the server did not answer: ${err.message}`;
  }
}

function thumbnail(url, alt) {
  if (!url) return element("div", "no-image", "no image file");
  const img = element("img");
  img.src = url;
  img.alt = alt;
  img.loading = "lazy";
  return img;
}

function showResults(data) {
  const list = $("#results");
  list.replaceChildren();
  const t = data.timing;
  const parts = [`${data.results.length} of ${data.images} images in ${t.total_ms.toFixed(0)} ms`,
                 `coarse ${t.coarse_ms.toFixed(1)} ms`];
  if (t.rerank_ms !== undefined) parts.push(`re-ranking ${data.reranked} candidates ${t.rerank_ms.toFixed(0)} ms`);
  $("#status").textContent = parts.join(" · ");
  for (const r of data.results) {
    const card = element("button", "result");
    card.type = "button";
    card.dataset.id = r.id;
    card.append(thumbnail(r.image, `image ${r.id}`));
    const caption = element("span", "caption");
    caption.append(element("b", "", `#${r.rank}`), ` ${r.id}`);
    card.append(caption);
    if (r.objects && r.objects.length) card.append(element("span", "objects", r.objects.join(", ")));
    const scores = element("span", "scores", `coarse ${r.coarse.toFixed(3)}` +
                           (r.score === null ? "" : ` · re-ranked ${r.score.toFixed(2)}`));
    scores.title = $("#scores-help").textContent;  // what the two numbers are
    card.append(scores);
    card.addEventListener("click", () => select(r, card));
    list.append(card);
  }
}

// a submitted query becomes a new history entry (?q=...); loading or going Back to one runs it again
function queryInUrl() {
  return (new URLSearchParams(window.location.search).get("q") || "").trim();
}

function submit(event) {
  event.preventDefault();
  const q = $("#q").value.trim();
  if (!q) return;
  if (q !== queryInUrl()) history.pushState({ q }, "", `?${new URLSearchParams({ q })}`);
  search(q);
}

function fromUrl() {
  const q = queryInUrl();
  $("#q").value = q;
  if (q) {
    search(q);
    return;
  }
  current.query = "";
  $("#results").replaceChildren();
  $("#status").textContent = "";
  $("#detail").hidden = true;
}

async function search(q) {
  current.query = q;
  $("#detail").hidden = true;
  current.image = null;
  const params = new URLSearchParams({ q, top: $("#top").value, rerank: $("#rerank").value });
  $("#status").textContent = "searching…";
  try {
    const data = await api(`/api/search?${params}`);
    if (current.query === q) showResults(data);  // not a query replaced meanwhile (Back)
  } catch (err) {
    $("#status").textContent = `search failed: ${err.message}`;
  }
}

function drawBoxes(data) {
  const svg = $("#boxes");
  const labels = $("#labels");
  svg.replaceChildren();
  labels.replaceChildren();
  svg.setAttribute("viewBox", `0 0 ${data.width} ${data.height}`);
  $("#stage").style.aspectRatio = `${data.width} / ${data.height}`;
  const list = $("#phrases");
  list.replaceChildren();
  const shown = {};  // phrases already drawn on each region: their labels stack, their boxes dash
  data.phrases.forEach((p, i) => {
    const color = COLORS[i % COLORS.length];
    const item = element("li");
    const swatch = element("span", "swatch");
    swatch.style.background = color;
    item.append(swatch, element("b", "", p.phrase));
    if (p.region < 0) {
      item.append(" — the image has no regions");
      list.append(item);
      return;
    }
    item.append(` → region ${p.region} (cosine ${p.score.toFixed(3)})`);
    list.append(item);
    const [x0, y0, x1, y1] = p.box;
    const rect = document.createElementNS(SVG, "rect");
    rect.setAttribute("class", "box");
    rect.setAttribute("x", x0);
    rect.setAttribute("y", y0);
    rect.setAttribute("width", Math.max(x1 - x0, 0));
    rect.setAttribute("height", Math.max(y1 - y0, 0));
    rect.setAttribute("stroke", color);
    const before = shown[p.region] || 0;
    shown[p.region] = before + 1;
    if (before) rect.setAttribute("stroke-dasharray", "6 6");
    svg.append(rect);
    // a label sits above its box's left corner; inside the box at the top edge, right-aligned at the right
    const label = element("span", "label", p.phrase);
    if (x0 / data.width > 0.55) label.style.right = `${100 - (100 * x1) / data.width}%`;
    else label.style.left = `${(100 * x0) / data.width}%`;
    label.style.top = `${(100 * y0) / data.height}%`;
    const inside = y0 / data.height < 0.12;
    label.style.transform = `translateY(${inside ? 100 * before : -100 * (before + 1)}%)`;
    label.style.background = color;
    labels.append(label);
  });
}

async function select(result, card) {
  document.querySelectorAll(".result.selected").forEach((el) => el.classList.remove("selected"));
  card.classList.add("selected");
  current.image = result.id;
  $("#detail").hidden = false;
  $("#detail-title").textContent = `image ${result.id}`;
  const large = $("#large");
  large.hidden = !result.image;
  if (result.image) large.src = result.image;
  $("#boxes").replaceChildren();
  $("#labels").replaceChildren();
  $("#phrases").replaceChildren();
  $("#answers").replaceChildren();
  $("#ground-status").textContent = "grounding the phrases…";
  const params = new URLSearchParams({ image: result.id, q: current.query });
  try {
    const data = await api(`/api/ground?${params}`);
    if (current.image !== result.id) return;  // another image was clicked meanwhile
    drawBoxes(data);
    $("#ground-status").textContent = data.phrases.length
      ? `each phrase of “${current.query}” and the region it grounds to (${data.ms.toFixed(0)} ms)`
      : "no noun phrase in the query to ground";
  } catch (err) {
    $("#ground-status").textContent = `grounding failed: ${err.message}`;
  }
}

async function ask(event) {
  event.preventDefault();
  const question = $("#question").value.trim();
  if (!question || current.image === null) return;
  const list = $("#answers");
  list.replaceChildren(element("li", "", "thinking…"));
  try {
    const data = await api("/api/answer", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ image: current.image, question, top: 3 }),
    });
    list.replaceChildren();
    for (const a of data.answers) {
      const item = element("li", "answer");
      const bar = element("span", "bar");
      bar.style.width = `${(100 * a.probability).toFixed(1)}%`;
      item.append(element("b", "", a.answer), element("span", "prob", `${(100 * a.probability).toFixed(1)}%`), bar);
      list.append(item);
    }
  } catch (err) {
    list.replaceChildren(element("li", "", `no answer: ${err.message}`));
  }
}

$("#search").addEventListener("submit", submit);
$("#ask").addEventListener("submit", ask);
window.addEventListener("popstate", fromUrl);
loadHealth();
fromUrl();
