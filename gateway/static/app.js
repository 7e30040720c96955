// The gateway's web page: pick, drop or paste an image (or click a bundled example), send it to
// the REST API (README.md, "API") and show the decision, the top-k scores and the timings. A photo
// far larger than the model's input is shrunk in the browser before it is sent (see "shrinking").
//
// Plain browser JavaScript, no build step and no third-party code, so the page works offline and
// what is served is what is read. Every URL is relative, so the page also works behind a path
// prefix. Optional gateway features (the example list, Server-Timing) are used when present and
// quietly left out when absent.

const $ = (id) => document.getElementById(id);

const ui = {
  status: $("service-status"),
  statusText: $("service-status-text"),
  modelField: $("model-field"),
  model: $("model"),
  topK: $("top-k"),
  file: $("file"),
  dropzone: $("dropzone"),
  dropzoneTitle: $("dropzone-title"),
  previewFrame: $("preview-frame"),
  preview: $("preview"),
  icon: $("dropzone-icon"),
  examples: $("examples"),
  exampleList: $("example-list"),
  resultCard: $("result-card"),
  placeholder: $("placeholder"),
  busy: $("busy"),
  outcome: $("outcome"),
  decision: $("decision"),
  decisionBadge: $("decision-badge"),
  decisionLabel: $("decision-label"),
  decisionNote: $("decision-note"),
  fleet: $("fleet"),
  bars: $("bars"),
  metaModel: $("meta-model"),
  metaLatency: $("meta-latency"),
  metaServerRow: $("meta-server-row"),
  metaServer: $("meta-server"),
  metaStages: $("meta-stages"),
  metaUploadRow: $("meta-upload-row"),
  metaUpload: $("meta-upload"),
  problem: $("problem"),
  problemTitle: $("problem-title"),
  problemMessage: $("problem-message"),
  problemDetail: $("problem-detail"),
  announcer: $("announcer"),
};

// What the user sees for each HTTP status of the error table (README.md, "Errors"); the server's
// own message is shown under the title.
const ERROR_TITLES = {
  400: "This file cannot be classified",
  401: "Not signed in",
  404: "Unknown model",
  413: "The file is too large",
  429: "The service is busy, try again in a moment",
  503: "The model is not available right now",
  504: "The request took too long",
};

const state = {
  current: null,     // {blob, name, source}: the image on screen, re-sent when the model or top-k changes
  inFlight: null,    // AbortController of the request whose answer the page is waiting for
  previewUrl: null,  // object URL of the preview, revoked when replaced
  defaultModel: "",  // the gateway's default model: the first that GET v1/models lists
  inputs: {},        // model name -> {height, width} of its input, from GET v1/fleet
  labels: {},        // model name -> its labels, from GET v1/models (to say what it knows)
};

const percent = (score) => `${(score * 100).toFixed(1)}%`;

function show(element, visible) {
  element.hidden = !visible;
}

function setPanel(which) {
  ui.outcome.classList.remove("stale");
  show(ui.placeholder, which === "placeholder");
  show(ui.busy, which === "busy");
  show(ui.outcome, which === "outcome");
  show(ui.problem, which === "problem");
  ui.resultCard.setAttribute("aria-busy", String(which === "busy"));
  if (which === "outcome" || which === "problem") revealResult();
}

// While waiting, an answer already on screen stays (dimmed) rather than flickering away.
function setBusy() {
  if (ui.outcome.hidden) {
    setPanel("busy");
  } else {
    ui.outcome.classList.add("stale");
    ui.resultCard.setAttribute("aria-busy", "true");
  }
}

// On a phone the answer may be below the fold (after clicking an example further down, say):
// bring it into view without moving the keyboard focus.
function revealResult() {
  const box = ui.resultCard.getBoundingClientRect();
  if (box.top < 0 || box.top > window.innerHeight - 80) {
    const smooth = !window.matchMedia("(prefers-reduced-motion: reduce)").matches;
    ui.resultCard.scrollIntoView({ block: "start", behavior: smooth ? "smooth" : "auto" });
  }
}

function announce(text) {
  ui.announcer.textContent = text;
}

// ---- models ---------------------------------------------------------------------------------

const MODELS_RETRY_MS = 5000;

// Also called again while no model is available (the gateway or model server still starting), so
// the header turns green without a reload.
async function loadModels() {
  let models;
  try {
    const response = await fetch("v1/models", { headers: { accept: "application/json" } });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    models = (await response.json()).models || [];
  } catch (err) {
    setServiceStatus("down", `Models unavailable (${err.message})`);
    setTimeout(loadModels, MODELS_RETRY_MS);
    return;
  }
  renderModelChoice(models);
  state.defaultModel = models[0]?.name || "";
  for (const m of models) state.labels[m.name] = m.labels || [];
  const ready = models.filter((m) => m.state === "AVAILABLE");
  if (ready.length === 0) setTimeout(loadModels, MODELS_RETRY_MS);
  if (models.length === 0) {
    setServiceStatus("down", "No models served");
  } else if (ready.length === 0) {
    setServiceStatus("down", models.length === 1
      ? `${models[0].name}: ${models[0].state.toLowerCase().replace(/_/g, " ")}`
      : "No model available");
  } else if (ready.length === models.length) {
    setServiceStatus("ready", models.length === 1
      ? `${models[0].name} v${models[0].version} ready`
      : `${models.length} models ready`);
  } else {
    setServiceStatus("partial", `${ready.length} of ${models.length} models ready`);
  }
}

function setServiceStatus(kind, text) {
  ui.status.dataset.state = kind;
  ui.statusText.textContent = text;
}

// The selector only appears when there is a choice to make. Its first entry sends requests to
// /v1/classify, so the server keeps deciding what "the default model" is.
function renderModelChoice(models) {
  const chosen = ui.model.value;
  ui.model.replaceChildren(new Option("Default", ""));
  for (const m of models) {
    const version = Number(m.version) > 0 ? ` v${m.version}` : "";
    const stateNote = m.state && m.state !== "AVAILABLE"
      ? ` (${m.state.toLowerCase().replace(/_/g, " ")})` : "";
    ui.model.append(new Option(`${m.name}${version}${stateNote}`, m.name));
  }
  if (models.some((m) => m.name === chosen)) ui.model.value = chosen;
  show(ui.modelField, models.length > 1);
}

// ---- shrinking ------------------------------------------------------------------------------

// A photo far larger than the model's input (a phone's 12 MP for a 28x28 model) is shrunk here
// before upload: megabytes become kilobytes and the gateway decodes far fewer pixels. A browser's
// resize is not the gateway's (Pillow's), so the photo is only brought down to SHRINK_FACTOR times
// the input size, as a lossless PNG, and the gateway still makes the last step to the model's
// pixels. The input sizes come from GET v1/fleet (models.<name>.versions[].input, "28x28x1"); a
// gateway that does not answer it gets every image as it is. Only the formats the gateway accepts
// by default are shrunk, so a format it refuses is still refused with its own message.
const SHRINK_FACTOR = 4;
const SHRINK_BELOW = 0.5;  // shrink only when the photo is at least twice the target on each side
const SHRINKABLE = [[0xff, 0xd8, 0xff], [0x89, 0x50, 0x4e, 0x47], [0x52, 0x49, 0x46, 0x46]];  // JPEG, PNG, RIFF (WebP)

async function loadInputs() {
  try {
    const response = await fetch("v1/fleet", { headers: { accept: "application/json" } });
    if (!response.ok) return;
    const fleet = await response.json();
    showFleet(fleet);
    for (const [name, model] of Object.entries(fleet.models || {})) {
      const versions = model.versions || [];
      const chosen = versions.find((v) => v.version === model.default_version) || versions[0];
      const size = /^(\d+)x(\d+)x\d+$/.exec(chosen?.input || "");
      if (size) state.inputs[name] = { height: Number(size[1]), width: Number(size[2]) };
    }
  } catch (err) {
    console.info("no model input sizes; images are sent as they are:", err.message);
  }
}

// One line under the page: how many model servers answer, and which versions they serve.
function showFleet(fleet) {
  const endpoints = fleet.endpoints || [];
  if (endpoints.length === 0) return;
  const healthy = endpoints.filter((e) => e.state === "healthy").length;
  const versions = Object.entries(fleet.models || {}).map(([name, model]) =>
    `${name} ${(model.versions || []).map((v) => `v${v.version} on ${v.endpoints}`).join(", ") || "not served"}`);
  ui.fleet.textContent = `Model servers: ${healthy} of ${endpoints.length} healthy` +
    (versions.length ? ` · ${versions.join(" · ")}` : "");
  show(ui.fleet, true);
}

async function shrinkable(blob) {
  const head = new Uint8Array(await blob.slice(0, 4).arrayBuffer());
  return SHRINKABLE.some((magic) => magic.every((byte, i) => head[i] === byte));
}

// {blob, width, height} of the shrunk photo, or null: send the original.
async function shrinkForUpload(blob) {
  const input = state.inputs[ui.model.value || state.defaultModel];
  if (!input || !(await shrinkable(blob))) return null;
  let bitmap;
  try {
    bitmap = await createImageBitmap(blob);  // EXIF orientation applied, as the gateway does
  } catch {
    return null;  // not an image this browser decodes: the gateway will say what is wrong
  }
  try {
    const scale = Math.max(SHRINK_FACTOR * input.width / bitmap.width, SHRINK_FACTOR * input.height / bitmap.height);
    if (scale > SHRINK_BELOW) return null;
    const width = Math.max(1, Math.round(bitmap.width * scale));
    const height = Math.max(1, Math.round(bitmap.height * scale));
    const canvas = document.createElement("canvas");
    canvas.width = width;
    canvas.height = height;
    const context = canvas.getContext("2d");
    context.imageSmoothingEnabled = true;
    context.imageSmoothingQuality = "high";
    context.drawImage(bitmap, 0, 0, width, height);
    const png = await new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
    return png && png.size < blob.size ? { blob: png, width, height } : null;
  } finally {
    bitmap.close();
  }
}

function formatBytes(n) {
  if (n >= 1e6) return `${(n / 1e6).toFixed(1)} MB`;
  return n >= 1e3 ? `${Math.round(n / 1e3)} kB` : `${n} B`;
}

// ---- examples -------------------------------------------------------------------------------

// The bundled examples come from GET v1/examples ({"examples": [{"name", "url"}]}); a gateway
// without that route simply gets a page without the gallery.
async function loadExamples() {
  let examples;
  try {
    const response = await fetch("v1/examples", { headers: { accept: "application/json" } });
    if (!response.ok) return;
    examples = (await response.json()).examples || [];
  } catch (err) {
    console.info("no example gallery:", err.message);
    return;
  }
  ui.exampleList.replaceChildren(...examples.map(renderExample));
  show(ui.examples, examples.length > 0);
}

function exampleTitle(name) {
  const stem = name.split("/").pop().replace(/\.[^.]+$/, "");
  return stem.replace(/[-_]+/g, " ").trim();
}

function renderExample(example) {
  const title = exampleTitle(example.name);
  const item = document.createElement("li");
  const button = document.createElement("button");
  button.type = "button";
  button.className = "example";
  button.dataset.url = example.url;
  button.title = title;
  button.setAttribute("aria-label", `Classify example: ${title}`);
  const img = document.createElement("img");
  img.src = example.url;
  img.alt = "";
  img.loading = "lazy";
  img.decoding = "async";
  img.addEventListener("load", () => markPixelArt(img), { once: true });
  const caption = document.createElement("span");
  caption.textContent = title;
  caption.setAttribute("aria-hidden", "true");
  button.append(img, caption);
  button.addEventListener("click", () => classifyExample(example, title, button));
  item.append(button);
  return item;
}

async function classifyExample(example, title, button) {
  try {
    const response = await fetch(example.url);
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const blob = await response.blob();
    classify(blob, example.name.split("/").pop() || title, button);
  } catch (err) {
    showProblem({
      title: "The example could not be loaded",
      message: `${example.url}: ${err.message}`,
    });
  }
}

// The example on screen, if any, is marked (aria-current) so it stays recognisable in the gallery.
function markCurrentExample(button) {
  for (const other of ui.exampleList.querySelectorAll("[aria-current]")) {
    other.removeAttribute("aria-current");
  }
  button?.setAttribute("aria-current", "true");
}

// Tiny images (Fashion-MNIST is 28x28) are scaled up without blurring.
function markPixelArt(img) {
  img.classList.toggle("pixelated", img.naturalWidth > 0 && img.naturalWidth <= 64);
}

// ---- picking, dropping, pasting -------------------------------------------------------------

function wireInputs() {
  ui.dropzone.addEventListener("click", () => ui.file.click());
  ui.file.addEventListener("change", () => {
    const [file] = ui.file.files;
    if (file) classify(file, file.name);
    ui.file.value = ""; // choosing the same file again still fires "change"
  });

  // Drops land anywhere on the page: a near miss must not make the browser open the file.
  let depth = 0;
  const highlight = (on) => ui.dropzone.classList.toggle("dragging", on);
  window.addEventListener("dragenter", (e) => {
    if (!hasFiles(e)) return;
    depth += 1;
    highlight(true);
  });
  window.addEventListener("dragleave", () => {
    depth = Math.max(0, depth - 1);
    if (depth === 0) highlight(false);
  });
  window.addEventListener("dragover", (e) => {
    if (!hasFiles(e)) return;
    e.preventDefault();
    e.dataTransfer.dropEffect = "copy";
  });
  window.addEventListener("drop", (e) => {
    if (!hasFiles(e)) return;
    e.preventDefault();
    depth = 0;
    highlight(false);
    const [file] = e.dataTransfer.files;
    if (file) classify(file, file.name);
  });

  document.addEventListener("paste", (e) => {
    const file = [...(e.clipboardData?.files || [])][0];
    if (!file) return;
    e.preventDefault();
    classify(file, file.name || "pasted image");
  });

  const again = () => {
    const { blob, name, source } = state.current || {};
    if (blob) classify(blob, name, source);
  };
  ui.model.addEventListener("change", again);
  ui.topK.addEventListener("change", again);
}

function hasFiles(event) {
  return [...(event.dataTransfer?.types || [])].includes("Files");
}

function showPreview(blob, name) {
  if (state.previewUrl) URL.revokeObjectURL(state.previewUrl);
  state.previewUrl = URL.createObjectURL(blob);
  ui.preview.classList.remove("pixelated");
  ui.preview.onload = () => markPixelArt(ui.preview);
  // A file the browser cannot render (text, say) shows no broken-image icon.
  ui.preview.onerror = () => {
    show(ui.previewFrame, false);
    show(ui.icon, true);
  };
  ui.preview.src = state.previewUrl;
  ui.preview.alt = `Selected image: ${name}`;
  show(ui.previewFrame, true);
  show(ui.icon, false);
  ui.dropzoneTitle.textContent = "Choose another image";
}

// ---- classifying ----------------------------------------------------------------------------

function classifyUrl() {
  const model = ui.model.value;
  const path = model ? `v1/models/${encodeURIComponent(model)}:classify` : "v1/classify";
  return `${path}?top_k=${encodeURIComponent(ui.topK.value)}`;
}

// `source` is the gallery button the image came from, if any.
async function classify(blob, name, source = null) {
  state.inFlight?.abort(); // only the latest image's answer may reach the screen
  const controller = new AbortController();
  state.inFlight = controller;
  state.current = { blob, name, source };
  markCurrentExample(source);
  showPreview(blob, name);
  setBusy();

  const started = performance.now();
  let response;
  let body;
  let shrunk = null;
  try {
    shrunk = await shrinkForUpload(blob);
    if (controller.signal.aborted) return;
    const form = new FormData();
    form.append("image", shrunk ? shrunk.blob : blob, name);
    response = await fetch(classifyUrl(), {
      method: "POST",
      body: form,
      headers: { accept: "application/json" },
      signal: controller.signal,
    });
    body = await readJson(response);
  } catch (err) {
    if (err.name === "AbortError") return;
    showProblem({
      title: "The gateway could not be reached",
      message: `${err.message}. Is the gateway still running?`,
    });
    return;
  } finally {
    if (state.inFlight === controller) state.inFlight = null;
  }
  if (controller.signal.aborted) return;
  const elapsed = performance.now() - started;

  if (!response.ok) {
    showHttpError(response, body, name);
  } else {
    showOutcome(body, { elapsed, serverTiming: response.headers.get("server-timing") });
    showUpload(blob, shrunk);
  }
}

function showUpload(original, shrunk) {
  ui.metaUpload.dataset.shrunk = String(Boolean(shrunk));
  ui.metaUpload.textContent = shrunk
    ? `shrunk here to ${shrunk.width}×${shrunk.height}: ${formatBytes(shrunk.blob.size)} instead of ${formatBytes(original.size)}`
    : "";
  show(ui.metaUploadRow, Boolean(shrunk));
}

// Error answers from a proxy in front of the gateway may not be JSON; keep going without a body.
async function readJson(response) {
  const text = await response.text();
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}

function showOutcome(answer, timing) {
  const predictions = answer.predictions || [];
  const top = predictions[0];
  const confident = Boolean(answer.confident);

  ui.decision.dataset.confident = String(confident);
  // The server's label verbatim: for an unsure answer it is the model's uncertain label.
  ui.decisionLabel.textContent = answer.label;
  ui.decisionBadge.textContent = confident ? "Decision" : "No decision";
  ui.decisionNote.textContent = confident ? (top ? `Score ${percent(top.score)}` : "") : whyNotSure(answer);

  ui.bars.replaceChildren(...predictions.map((p, i) => barRow(p, i === 0 && confident)));

  ui.metaModel.textContent = `${answer.model} v${answer.model_version}`;
  ui.metaLatency.textContent = `${Math.round(timing.elapsed)} ms`;
  const server = describeServerTiming(timing.serverTiming);
  ui.metaServer.textContent = server?.total ?? "";
  ui.metaStages.textContent = server?.stages ?? "";
  show(ui.metaServerRow, Boolean(server));

  setPanel("outcome");
  announce(confident
    ? `Decision: ${answer.label}, score ${percent(top?.score ?? 0)}.`
    : `${answer.label}. Best guess ${top ? `${top.label}, ${percent(top.score)}` : "none"}.`);
}

// Why an answer is "not sure", in words: the gateway says which rule decided (answer.reason).
function whyNotSure(answer) {
  const [top, second] = answer.predictions || [];
  const guess = top ? ` Best guess: ${top.label} (${percent(top.score)}).` : "";
  switch (answer.reason) {
    case "OUT_OF_DISTRIBUTION": {
      const known = state.labels[answer.model] || [];
      const list = known.length > 8 ? `${known.slice(0, 8).join(", ")}, …` : known.join(", ");
      return "This does not look like anything the model knows" + (list ? ` (it knows: ${list}).` : ".");
    }
    case "SMALL_MARGIN":
      return top && second
        ? `Too close to call: ${top.label} (${percent(top.score)}) or ${second.label} (${percent(second.score)}).`
        : "Too close to call." + guess;
    case "LOW_SCORE":
      return "No class scores high enough." + guess;
    case "IN_BAND":
      return "The score lies in the model's \"not sure\" band." + guess;
    default:
      return "The scores do not pass the model's thresholds." + guess;
  }
}

function barRow(prediction, chosen) {
  const row = document.createElement("li");
  row.className = chosen ? "bar chosen" : "bar";
  row.dataset.label = prediction.label;
  row.dataset.score = String(prediction.score);

  const label = document.createElement("span");
  label.className = "bar-label";
  label.textContent = prediction.label;

  const track = document.createElement("span");
  track.className = "bar-track";
  track.setAttribute("aria-hidden", "true");
  const fill = document.createElement("span");
  fill.className = "bar-fill";
  fill.style.width = `${Math.max(0, Math.min(1, prediction.score)) * 100}%`;
  track.append(fill);

  const value = document.createElement("span");
  value.className = "bar-value";
  value.textContent = percent(prediction.score);

  row.append(label, track, value);
  return row;
}

// Server-Timing: "decode;dur=0.8, queue_wait;dur=2.3, predict;dur=4.2" (any metric names). The
// server's time is its `total` metric when it sends one, else the sum of its stages.
function describeServerTiming(header) {
  if (!header) return null;
  const metrics = header.split(",").map((entry) => {
    const [name, ...params] = entry.trim().split(";");
    const dur = params.map((p) => p.trim()).find((p) => p.startsWith("dur="));
    return { name: name.trim().replace(/_/g, " "), dur: dur ? Number(dur.slice(4)) : NaN };
  }).filter((m) => m.name && Number.isFinite(m.dur));
  if (metrics.length === 0) return null;
  const total = metrics.find((m) => m.name === "total");
  const stages = metrics.filter((m) => m !== total);
  const sum = total ? total.dur : stages.reduce((acc, m) => acc + m.dur, 0);
  return {
    total: `${sum.toFixed(1)} ms`,
    stages: stages.length ? `${stages.map((m) => `${m.name} ${m.dur.toFixed(1)}`).join(" · ")} ms` : "",
  };
}

function showHttpError(response, body, name) {
  const error = body?.error || {};
  const requestId = error.request_id || response.headers.get("x-request-id") || "";
  showProblem({
    title: ERROR_TITLES[response.status] || `The gateway answered HTTP ${response.status}`,
    message: error.message || response.statusText || "No explanation was given.",
    detail: [
      `File: ${name}`,
      `HTTP ${response.status}${error.code ? ` ${error.code}` : ""}`,
      requestId ? `Request id: ${requestId}` : "",
    ].filter(Boolean).join(" · "),
  });
}

function showProblem({ title, message, detail = "" }) {
  ui.problemTitle.textContent = title;
  ui.problemMessage.textContent = message;
  ui.problemDetail.textContent = detail;
  setPanel("problem");
  // role="alert" on the panel announces it; the polite region is cleared so it does not repeat.
  announce("");
}

// ---- start ----------------------------------------------------------------------------------

wireInputs();
loadModels();
loadInputs();
loadExamples();
