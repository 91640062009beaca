// The search page: one sentence -> ranked images; one image -> its phrases grounded as boxes,
// and answers to questions when the server has a VQA model; an image of the index ("more like
// this") or an uploaded one -> the images nearest it. Plain DOM, no build step; every text from
// the server goes in through textContent. The query lives in the URL (?q=, or ?like=<image id>):
// a link to the page shows its results, and Back returns to the previous query. Uploads are not
// in the URL.
"use strict";

const COLORS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324"];
const $ = (selector) => document.querySelector(selector);
const SVG = "http://www.w3.org/2000/svg";
const LIKE_HELP = "cosine similarity of the global embeddings of the two images (\u22121 to 1); higher is closer";
let current = { query: "", like: null, image: null, request: 0 };
let uploadLimit = 0;  // bytes, from /api/health

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
    $("#upload").hidden = !h.upload;
    uploadLimit = h.limits.upload;
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

function timingText(data) {
  const t = data.timing;
  const parts = [`${data.results.length} of ${data.images} images in ${t.total_ms.toFixed(0)} ms`];
  if (t.detect_ms !== undefined) parts.push(`detection ${t.detect_ms.toFixed(0)} ms`);
  if (t.encode_ms !== undefined && t.detect_ms !== undefined) parts.push(`encoding ${t.encode_ms.toFixed(0)} ms`);
  if (t.coarse_ms !== undefined) parts.push(`coarse ${t.coarse_ms.toFixed(1)} ms`);
  if (t.rerank_ms !== undefined) parts.push(`re-ranking ${data.reranked} candidates ${t.rerank_ms.toFixed(0)} ms`);
  return parts.join(" · ");
}

// the example the results are like: an image of the index, or an upload (shown from a data: URL)
function showExample(src, text) {
  $("#example").hidden = !text;
  $("#example-image").hidden = !src;
  if (src) $("#example-image").src = src;
  $("#example-text").textContent = text || "";
}

function card(r, byExample) {
  const item = element("div", "result");
  item.dataset.id = r.id;
  const open = element("button", "open");
  open.type = "button";
  open.append(thumbnail(r.image, `image ${r.id}`));
  const caption = element("span", "caption");
  caption.append(element("b", "", `#${r.rank}`), ` ${r.id}`);
  open.append(caption);
  if (r.objects && r.objects.length) open.append(element("span", "objects", r.objects.join(", ")));
  const scores = element("span", "scores", byExample ? `cosine ${r.coarse.toFixed(3)}` : `coarse ${r.coarse.toFixed(3)}` +
                         (r.score === null ? "" : ` · re-ranked ${r.score.toFixed(2)}`));
  scores.title = byExample ? LIKE_HELP : $("#scores-help").textContent;  // what the numbers are
  open.append(scores);
  open.addEventListener("click", () => select(r, item));
  const more = element("button", "like", "more like this");
  more.type = "button";
  more.title = `images whose embeddings are nearest that of ${r.id}`;
  more.addEventListener("click", () => likeFromCard(r));
  item.append(open, more);
  return item;
}

function showResults(data, byExample) {
  $("#results").replaceChildren(...data.results.map((r) => card(r, byExample)));
  $("#status").textContent = timingText(data);
  $("#scores-help").hidden = byExample;  // it explains a sentence's scores; a card's title explains these
}

function likeFromCard(r) {
  if (r.id !== (new URLSearchParams(window.location.search).get("like"))) {
    history.pushState({ like: r.id }, "", `?${new URLSearchParams({ like: r.id })}`);
  }
  $("#q").value = "";
  similar(r.id);
  window.scrollTo({ top: 0 });
}

// a submitted query becomes a new history entry (?q=... or ?like=...); loading or going Back to one runs it again
function queryInUrl() {
  return (new URLSearchParams(window.location.search).get("q") || "").trim();
}

function likeInUrl() {
  return new URLSearchParams(window.location.search).get("like") || "";
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
  const like = likeInUrl();
  $("#q").value = q;
  if (q) {
    search(q);
  } else if (like) {
    similar(like);
  } else {
    start("", null);
    current.request += 1;  // an answer still on its way is not shown
    $("#results").replaceChildren();
    $("#status").textContent = "";
  }
}

// a new query: the detail and the example of the previous one go; returns the request's number
function start(query, like) {
  current.query = query;
  current.like = like;
  current.image = null;
  $("#detail").hidden = true;
  showExample(null, "");
  current.request += 1;
  return current.request;
}

// runs a request and shows its results, unless another query was made meanwhile (Back);
// returns them, or null when it failed (the message names the request as ``what``)
async function run(request, url, options, byExample, what) {
  $("#status").textContent = "searching…";
  try {
    const data = await api(url, options);
    if (current.request !== request) return null;
    showResults(data, byExample);
    return data;
  } catch (err) {
    if (current.request === request) {
      $("#results").replaceChildren();
      $("#status").textContent = `${what} failed: ${err.message}`;
    }
    return null;
  }
}

function search(q) {
  const request = start(q, null);
  const params = new URLSearchParams({ q, top: $("#top").value, rerank: $("#rerank").value });
  return run(request, `/api/search?${params}`, undefined, false, "search");
}

async function similar(id) {
  const request = start("", id);
  const params = new URLSearchParams({ image: id, top: $("#top").value });
  const data = await run(request, `/api/similar?${params}`, undefined, true, "search");
  if (data !== null) showExample(data.like_image, `images like ${id} (itself left out)`);
}

function readAsDataUrl(file) {
  return new Promise((resolve) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => resolve(null);
    reader.readAsDataURL(file);
  });
}

async function upload() {
  const file = $("#file").files[0];
  $("#file").value = "";  // the same file can be chosen again
  if (!file) return;
  if (window.location.search) history.pushState({}, "", window.location.pathname);  // an upload has no URL
  $("#q").value = "";
  const request = start("", null);
  if (file.size > uploadLimit) {
    $("#results").replaceChildren();
    $("#status").textContent = `upload failed: ${file.name} is over ${(uploadLimit / 1048576).toFixed(0)} MB`;
    return;
  }
  const preview = file.type.startsWith("image/") ? await readAsDataUrl(file) : null;
  showExample(preview, `images like ${file.name}`);
  const params = new URLSearchParams({ top: $("#top").value });
  const options = { method: "POST", headers: { "Content-Type": "application/octet-stream" }, body: file };
  const data = await run(request, `/api/similar/upload?${params}`, options, true, `search by ${file.name}`);
  if (current.request !== request) return;
  if (data === null) {
    showExample(null, "");
    return;
  }
  const found = data.objects.length ? `: the detector found ${data.objects.join(", ")}` : "";
  showExample(preview, `images like ${file.name}${found}`);
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
  if (!current.query) {
    $("#ground-status").textContent = "search with a sentence to see its phrases grounded in the image";
    return;
  }
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
$("#file").addEventListener("change", upload);
window.addEventListener("popstate", fromUrl);
loadHealth();
fromUrl();
