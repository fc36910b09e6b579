// privsplit in the browser: the photo stays in this page. The client extractor (the bundle's ONNX file) runs
// here with onnxruntime-web (WebAssembly, one thread), Gaussian noise is added -- keyed per photo (keyed.js: the
// same photo always gets the same noise) or fresh per send (crypto.getRandomValues) -- and only the k noisy
// numbers are sent to the analyzer over OIP v2.
import * as ort from "onnxruntime-web";
import * as keyed from "./keyed.js";
import { centreBox, cropRGB, normalise, pilResize } from "./preprocess.js";

const cfg = JSON.parse(document.getElementById("privsplit-config").textContent);
const $ = (id) => document.getElementById(id);
// timings: performance.now() = ms since navigation started
const state = { ready: false, error: null, results: [], timings: { start: performance.now() } };
window.__privsplit = state; // read by the browser test
state.keyed = keyed; // the construction, for the browser test's published vectors

function fmtBytes(n) { return n < 1024 ? `${n} B` : n < 1048576 ? `${(n / 1024).toFixed(1)} KiB` : `${(n / 1048576).toFixed(2)} MiB`; }

async function fetchChecked(url, integrity) { // Subresource Integrity for the model and the WebAssembly too
  const resp = await fetch(url, { integrity, cache: "no-cache" });
  if (!resp.ok) throw new Error(`${url}: HTTP ${resp.status}`);
  return new Uint8Array(await resp.arrayBuffer());
}

async function load() {
  ort.env.wasm.numThreads = 1; // no SharedArrayBuffer, so no COOP/COEP headers needed
  ort.env.wasm.proxy = false;
  // vendored files only, never a CDN: the glue code is inside ort.wasm.bundle.min.mjs, the binary is ours
  ort.env.wasm.wasmPaths = { wasm: cfg.wasm_url };
  ort.env.wasm.wasmBinary = await fetchChecked(cfg.wasm_url, cfg.wasm_sri);
  const model = await fetchChecked(cfg.onnx_url, cfg.onnx_sri);
  state.session = await ort.InferenceSession.create(model, { executionProviders: ["wasm"] });
  state.timings.ready = performance.now();
  state.ready = true;
  $("status").textContent = `extractor loaded (${fmtBytes(model.length)}); pick face photos or use the webcam`;
  $("files").disabled = false;
  $("webcam").disabled = false;
}

function gaussian(n) { // Box-Muller on crypto.getRandomValues: the same N(0, 1) the Python client draws
  const u = new Uint32Array(2 * Math.ceil(n / 2)), out = new Float64Array(n);
  crypto.getRandomValues(u);
  for (let i = 0; i < n; i += 2) {
    const u1 = (u[i] + 0.5) / 4294967296, u2 = (u[i + 1] + 0.5) / 4294967296;
    const r = Math.sqrt(-2 * Math.log(u1));
    out[i] = r * Math.cos(2 * Math.PI * u2);
    if (i + 1 < n) out[i + 1] = r * Math.sin(2 * Math.PI * u2);
  }
  return out;
}

async function pixelsOf(source) { // decoded RGBA exactly as stored: no colour management, no EXIF rotation (like PIL)
  let bmp;
  try {
    bmp = await createImageBitmap(source, { colorSpaceConversion: "none", premultiplyAlpha: "none", imageOrientation: "none" });
  } catch {
    bmp = await createImageBitmap(source, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
  }
  const canvas = new OffscreenCanvas(bmp.width, bmp.height), ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(bmp, 0, 0);
  return { rgba: ctx.getImageData(0, 0, bmp.width, bmp.height).data, width: bmp.width, height: bmp.height };
}

function noisyFeatures(clean, eps) { // float32 steps exactly like the Python client: x + f32(f32(eps) * f32(sigma * std))
  const f = Math.fround, s = f(cfg.sigma);
  return clean.map((v, i) => f(v + f(f(eps[i]) * (cfg.noise_std ? f(s * f(cfg.noise_std[i])) : s))));
}

const noiseMode = () => (cfg.noise_mode === "none" ? "none" : $("noise-mode").value); // chosen on the page

async function normals(mode, rgb, n) { // {eps, crop hash (hex; stays in the page)}
  if (mode === "none") return { eps: new Float64Array(n), cropSha256: null };
  if (mode === "fresh") return { eps: gaussian(n), cropSha256: null };
  const key = await keyed.deviceKey(), digest = await keyed.sha256(rgb);
  const eps = await keyed.keyedNormals(key, digest, n);
  return { eps, cropSha256: Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("") };
}

async function features(source) {
  const { rgba, width, height } = await pixelsOf(source);
  const box = centreBox(width, height, cfg.crop);
  const rgb = pilResize(cropRGB(rgba, width, box), box.side, box.side, cfg.size);
  const x = new ort.Tensor("float32", normalise(rgb, cfg.size, cfg.mean, cfg.std), [1, 3, cfg.size, cfg.size]);
  const out = await state.session.run({ [cfg.input_name]: x });
  const clean = Array.from(out[cfg.output_name].data);
  const mode = noiseMode(), { eps, cropSha256 } = await normals(mode, rgb, clean.length);
  return { clean, noisy: noisyFeatures(clean, eps), noiseMode: mode, cropSha256, width, height };
}

async function infer(noisy) {
  const body = JSON.stringify({
    id: crypto.randomUUID(),
    inputs: [{ name: cfg.feature_name, shape: [1, ...cfg.feature_shape], datatype: "FP32", data: noisy }],
    outputs: cfg.outputs.map((name) => ({ name })),
  });
  const resp = await fetch(cfg.infer_url, { method: "POST", headers: { "Content-Type": "application/json" }, body });
  const answer = await resp.json();
  if (!resp.ok) throw new Error(answer.error || `HTTP ${resp.status}`);
  const out = Object.fromEntries(answer.outputs.map((o) => [o.name, o.data]));
  const [probs, label] = cfg.outputs.map((name) => out[name]);
  return { label: String(label[0]), probability: Math.max(...probs), bytes: new TextEncoder().encode(body).length };
}

function show(r, thumbUrl) {
  const row = document.createElement("tr");
  const img = document.createElement("img");
  img.alt = ""; img.src = thumbUrl;
  const label = document.createElement("b");
  label.textContent = r.label; // server and file names are text, never HTML
  const cells = [img, r.name, label, r.probability.toFixed(3),
    `${r.noisy.length} numbers, ${fmtBytes(r.bytes)} (JSON)`, `${fmtBytes(r.photoBytes)}, ${r.width}×${r.height} px`];
  for (const c of cells) {
    const td = document.createElement("td");
    if (typeof c === "string") td.textContent = c; else td.appendChild(c);
    row.appendChild(td);
  }
  $("results").appendChild(row);
}

async function handle(name, blob) { // also called by the browser test (state.handle) to switch modes mid-run
  try {
    const f = await features(blob);
    const r = { name, ...f, ...(await infer(f.noisy)), photoBytes: blob.size };
    state.results.push(r);
    if (!state.timings.firstLabel) state.timings.firstLabel = performance.now();
    show(r, URL.createObjectURL(blob));
  } catch (err) {
    state.results.push({ name, error: String(err) });
    $("status").textContent = `${name}: ${err}`;
  }
}

state.handle = handle;

$("files").addEventListener("change", async (ev) => {
  for (const file of ev.target.files) await handle(file.name, file);
  ev.target.value = "";
});

$("webcam").addEventListener("click", async () => {
  const video = $("video");
  if (!video.srcObject) {
    video.srcObject = await navigator.mediaDevices.getUserMedia({ video: true, audio: false });
    video.hidden = false;
    $("webcam").textContent = "Take photo";
    return;
  }
  const canvas = document.createElement("canvas");
  canvas.width = video.videoWidth; canvas.height = video.videoHeight;
  canvas.getContext("2d").drawImage(video, 0, 0);
  canvas.toBlob((blob) => handle(`webcam ${new Date().toLocaleTimeString()}`, blob), "image/png");
});

$("embedding").textContent = cfg.embedding_id;
$("sha").textContent = cfg.onnx_sha256;
$("model").textContent = cfg.model_name;
$("k").textContent = String(cfg.k);
if (cfg.noise_mode === "none") $("noise").hidden = true; else $("noise-mode").value = cfg.noise_mode;
load().catch((err) => { state.error = String(err); $("status").textContent = `could not load the extractor: ${err}`; });
