// The page: WebGPU checks, model loading, the photo and prompts, and the edit with its progress.
// `window.edict` exposes the state (GPU info, progress events) for debugging and the browser test.
import * as wasm from './pkg/edict_web.js';
import { SD15, SDXL, clearCache, loadFromFiles, loadFromUrl } from './loader.js';

// `generation` counts recoveries from a lost GPU device, so an operation that outlives one
// leaves the page alone. After a wasm panic (a trap) nothing may call into the module again:
// `trapped` says so, and the page reloads itself (a fresh module, its memory released).
let generation = 0;
let trapped = false;

const $ = (id) => document.getElementById(id);
const state = (window.edict = { gpu: null, gpuInfo: null, session: null, events: [], previews: {}, results: [], image: null, busy: false, lastLoad: null, running: null, report: null, taesd: false });
const params = new URLSearchParams(location.search);

function message(text, kind = 'error') {
  const m = $('message');
  m.textContent = text;
  m.className = kind;
  m.hidden = !text;
}

function setState(s) {
  document.body.dataset.state = s;
}

function mib(n) {
  return `${Math.round(n / (1 << 20))} MiB`;
}

/** Enables what can run now: loading needs the GPU, editing needs a model and a photo. */
function refresh() {
  const idle = !state.busy && !!state.gpu;
  for (const id of ['load-sd15', 'load-sdxl', 'load-url', 'clear-cache', 'model-folder', 'model-file', 'precision', 'lora-files', 'lora-scale']) $(id).disabled = !idle;
  const ready = idle && !!state.session;
  $('edit').disabled = $('invert').disabled = $('reconstruct').disabled = !(ready && state.image);
  $('latents-input').disabled = !ready;
  $('cancel').disabled = !state.busy || !state.session;
  for (const b of document.querySelectorAll('#targets .remove')) b.disabled = document.querySelectorAll('#targets li').length < 2;
}

async function startGpu() {
  if (!('gpu' in navigator)) {
    throw new Error('This browser has no WebGPU, which the editor needs. Use a recent Chrome or Edge ' +
      '(or Firefox/Safari with WebGPU enabled), over https or on localhost.');
  }
  const adapter = await navigator.gpu.requestAdapter();
  if (!adapter) {
    throw new Error('WebGPU is present but offers no GPU adapter (it may be disabled, blocklisted or without a driver). ' +
      'Check chrome://gpu, or try another browser.');
  }
  await wasm.default();
  // wgpu leaves the adapter's name empty in browsers; WebGPU's own GPUAdapterInfo has it
  const ai = adapter.info || {};
  state.gpu = await wasm.initGpu(ai.description || [ai.vendor, ai.architecture, ai.device].filter(Boolean).join(' '));
  const info = (state.gpuInfo = JSON.parse(state.gpu.info()));
  info.adapter ||= 'WebGPU adapter';
  $('gpu-status').textContent = `GPU: ${info.adapter}; shader-f16: ${info.shader_f16 ? 'yes' : 'no'}; ` +
    `largest storage buffer ${mib(Math.min(info.max_storage_buffer_binding_size, info.max_buffer_size))}.`;
  if (!info.shader_f16) {
    message('This GPU has no shader-f16: the networks run in f32, which needs twice the GPU memory (≈4 GB for SD 1.5) and is slower.', 'note');
  }
}

// ---- model ----

/**
 * Loads a model: `fill(builder, status)` adds its files. `source` says how to load it again
 * after a reload of the page: { url, precision } for a download, null for picked files.
 */
async function loadModel(name, fill, source = null) {
  state.busy = true;
  state.session?.free();
  state.session = null;
  state.lastLoad = { name, fill, source };
  refresh();
  message('');
  setState('loading');
  $('model').open = true;
  const bar = $('load-progress');
  bar.hidden = false;
  bar.removeAttribute('value');
  const status = (text, fraction) => {
    $('model-status').textContent = text;
    if (fraction == null) bar.removeAttribute('value');
    else bar.value = fraction;
  };
  let builder = new wasm.ModelBuilder(name);
  try {
    const loraNote = await addLoras(builder);
    // a folder streams: after its configs, begin() checks the GPU's limits and says what the
    // model needs (shown while it downloads), then each network is built on the GPU as its
    // weight file arrives, so wasm memory holds one file at a time
    let needs = null;
    const note = await fill(builder, status, () => {
      needs = builder.begin(state.gpu, $('precision').value);
      message(needs, 'note');
    });
    status('loading the networks onto the GPU…', null);
    await new Promise((r) => setTimeout(r, 0)); // let the status paint: building blocks the tab
    const b = builder;
    builder = null; // build() consumes it, even when it fails
    const session = b.build(state.gpu, $('precision').value);
    state.session = session;
    session.setPreview(onPreview); // kept by the session for every operation
    state.taesd = false;
    const previewNote = await syncPreviewDecoder();
    status(`Loaded ${name} (${session.precision}).`, 1);
    $('model').open = false;
    const notes = [note, loraNote, session.loadWarning, needs, previewNote].filter(Boolean);
    if (notes.length) message(notes.join('\n'), 'note');
    setState('model-loaded');
  } catch (e) {
    trapped ||= isTrap(e);
    status('No model loaded.', 0);
    message(`Could not load the model: ${e.message || e}`);
    setState('load-failed');
    if (deviceGone(e)) await recover('Loading the model', e, false);
  } finally {
    if (builder && !trapped) builder.free(); // a failed download: drop the bytes gathered so far
    bar.hidden = true;
    state.busy = false;
    refresh();
  }
}

/** Hands the picked LoRA files to `builder` at the chosen strength (before any weights); a note saying which. */
async function addLoras(builder) {
  const files = [...$('lora-files').files], scale = Number($('lora-scale').value);
  if (!files.length) return null;
  if (!Number.isFinite(scale)) throw new Error(`the LoRA strength "${$('lora-scale').value}" is not a number`);
  for (const f of files) builder.addLora(f.name, new Uint8Array(await f.arrayBuffer()), scale);
  return `LoRA merged at strength ${scale}: ${files.map((f) => f.name).join(', ')}.`;
}

/**
 * Which weight files to fetch or read: the fp16 ones unless f32 is chosen explicitly. Without
 * shader-f16 they are upcast on the GPU; the f32 files would double the download, and SD 1.5's
 * 3.4 GB f32 UNet alone would nearly fill wasm's 4 GB heap.
 */
function filePrecision() {
  return $('precision').value === 'f32' ? 'f32' : 'f16';
}

/** A component's weight files in the order the CLI tries them (the rule lives in the wasm module). */
const candidates = (p) => (component) => wasm.weightCandidates(component, p);

/** Loads a diffusers folder from its URL, with the weight files for `p` ("f16" or "f32"). */
const loadUrl = (name, url, p) => loadModel(name, (b, s, begin) => loadFromUrl(b, url, candidates(p), s, { begin }), { name, url, precision: p });

$('load-sd15').onclick = () => loadUrl(SD15.name, SD15.base, SD15.precision);
$('load-sdxl').onclick = () => loadUrl(SDXL.name, SDXL.base, SDXL.precision);
$('load-url').onclick = () => {
  const url = $('model-url').value.trim();
  if (!url) return message('Enter the base URL of a diffusers model folder.');
  loadUrl(url, url, filePrecision());
};
for (const id of ['model-folder', 'model-file']) {
  $(id).onchange = (ev) => {
    // a copy: clearing the input below empties its live FileList, and loadModel reads it later
    const files = [...ev.target.files];
    if (files.length) loadModel(files[0].webkitRelativePath.split('/')[0] || files[0].name, (b, s, begin) => loadFromFiles(b, files, candidates(filePrecision()), s, begin));
    ev.target.value = '';
  };
}
$('clear-cache').onclick = async () => {
  await clearCache();
  message('Downloaded models were removed from this browser.', 'note');
};

// ---- photo ----

async function setImage(file) {
  if (!file.type.startsWith('image/') && !/\.(png|jpe?g|webp|gif|bmp|tiff?)$/i.test(file.name)) {
    return message(`${file.name} is not an image.`);
  }
  state.image = new Uint8Array(await file.arrayBuffer());
  state.imageName = file.name;
  state.imageType = file.type;
  const p = $('photo');
  URL.revokeObjectURL(p.src);
  p.src = URL.createObjectURL(file);
  p.hidden = false;
  $('drop').classList.add('has-photo');
  $('drop-text').textContent = '';
  $('pick-text').textContent = 'Pick another photo';
  message('');
  refresh();
}

const drop = $('drop');
drop.ondragover = (e) => {
  e.preventDefault();
  drop.classList.add('over');
};
drop.ondragleave = () => drop.classList.remove('over');
drop.ondrop = (e) => {
  e.preventDefault();
  drop.classList.remove('over');
  const f = e.dataTransfer.files[0];
  if (f) setImage(f);
};
drop.onkeydown = (e) => {
  if (e.target === drop && (e.key === 'Enter' || e.key === ' ')) {
    e.preventDefault();
    $('image-input').click();
  }
};
$('image-input').onchange = (e) => e.target.files[0] && setImage(e.target.files[0]);

// ---- target prompts: a list, one input per target ----

function addTarget(value = '') {
  const li = document.createElement('li');
  const input = document.createElement('input');
  input.className = 'target';
  input.value = value;
  input.placeholder = 'a photo of a dog';
  const remove = document.createElement('button');
  remove.type = 'button';
  remove.className = 'remove';
  remove.textContent = '×';
  remove.onclick = () => {
    li.remove();
    numberTargets();
    refresh();
  };
  li.append(input, remove);
  $('targets').append(li);
  numberTargets();
  refresh();
  return input;
}

function numberTargets() {
  document.querySelectorAll('#targets li').forEach((li, i) => {
    li.querySelector('.target').setAttribute('aria-label', `Target prompt ${i + 1}`);
    li.querySelector('.remove').setAttribute('aria-label', `Remove target ${i + 1}`);
    li.querySelector('.remove').title = `Remove target ${i + 1}`;
  });
}

/** The target prompts in order; an empty one is an error, not silently skipped (results are numbered). */
function readTargets() {
  const targets = [...document.querySelectorAll('#targets .target')].map((i) => i.value.trim());
  if (!targets.length) throw new Error('Add a target prompt: the photo as you want it.');
  const empty = targets.findIndex((t) => !t);
  if (empty >= 0) throw new Error(`Target ${empty + 1} is empty: write it or remove it.`);
  return targets;
}

$('add-target').onclick = () => addTarget().focus();

// ---- settings: the CLI's defaults come from the wasm module (defaultOptions) ----

/** "fluffy=2, watercolor=0.5" as the wasm's ["fluffy=2", "watercolor=0.5"]. */
function readReweight() {
  return $('reweight').value.split(/[,;\n]/).map((s) => s.trim()).filter(Boolean);
}

/**
 * The wasm module's `options` object from the form (the CLI flags' names): only what the form
 * says; the module checks every value (`session.check`) and fills in the rest with the CLI's
 * defaults.
 */
function readOptions() {
  const num = (id, integer) => {
    const v = $(id).value.trim();
    const n = Number(v);
    if (v === '' || !Number.isFinite(n) || (integer && !Number.isInteger(n))) throw new Error(`${id}: "${v}" is not a valid number`);
    return n;
  };
  const o = {
    settings: {
      method: $('method').value, steps: num('steps', true), strength: num('strength'), mix: num('mix'), gamma: num('gamma'),
      guidance: num('guidance'), negative: $('negative').value,
    },
    controls: { p2p: $('p2p').checked, reweight: readReweight() },
  };
  const w = $('width').value.trim(), h = $('height').value.trim();
  if (w || h) {
    if (!w || !h) throw new Error('Give both width and height, or neither.');
    [o.width, o.height] = [num('width', true), num('height', true)];
  }
  if (o.controls.p2p) {
    for (const name of ['tokens', 'self']) {
      const [a, b] = ['from', 'to'].map((end) => $(`p2p-${name}-${end}`).value.trim());
      o.controls[`p2p_${name}`] = `${a}:${b}`;
    }
  }
  return o;
}

// ---- operations ----

const STAGES = { encode: 'encoding the photo', invert: 'inverting', edit: 'editing', reconstruct: 'reconstructing', decode: 'decoding' };

function onProgress(stage, done, total) {
  state.events.push({ stage, done, total, t: performance.now() });
  $('progress').value = total ? done / total : 0;
  const what = STAGES[stage] || stage;
  $('stage').textContent = stage === 'encode' || stage === 'decode' ? `${what}…` : `${what}: UNet call ${done}/${total}`;
}

/**
 * TAESD for the live preview: madebyollin's for the model's family from Hugging Face, or the
 * folder `?taesd=URL` names (its config.json and diffusion_pytorch_model.safetensors). A
 * failure leaves the linear preview; the returned note says which preview runs.
 */
async function loadPreviewDecoder(session) {
  const base = new URL(params.get('taesd') || `https://huggingface.co/${session.previewDecoderRepo}/resolve/main/`, location.href);
  const get = async (file) => {
    const res = await fetch(new URL(file, base));
    if (!res.ok) throw new Error(`${file}: HTTP ${res.status}`);
    return res;
  };
  try {
    const config = await (await get('config.json')).text();
    const weights = new Uint8Array(await (await get('diffusion_pytorch_model.safetensors')).arrayBuffer());
    session.setPreviewDecoder(config, weights);
    return null;
  } catch (e) {
    return `The TAESD preview could not be loaded from ${base} (${e.message || e}); the live preview stays the fast 1/8-size one.`;
  }
}

/** Gives the session the preview the TAESD box asks for (after a load, and when the box changes while idle); a note when it cannot. */
async function syncPreviewDecoder() {
  const session = state.session, want = $('taesd').checked;
  if (state.taesd === want) return null;
  state.taesd = want;
  if (!want) return session.setPreviewDecoder(null, null), null;
  return loadPreviewDecoder(session);
}

$('taesd').onchange = async () => {
  if (!state.session || state.busy) return; // a busy session takes it at the next load
  const note = await syncPreviewDecoder();
  if (note) message(note, 'note');
};

/** The session's preview callback: the predicted image (1/8 size, or full size with TAESD; one tile per target) after each UNet call. */
function onPreview(stage, done, total, width, height, rgba) {
  state.previews[stage] = (state.previews[stage] || 0) + 1;
  const c = $('live');
  if (c.width !== width || c.height !== height) {
    c.width = width;
    c.height = height;
  }
  c.getContext('2d').putImageData(new ImageData(rgba, width, height), 0, 0);
  $('live-stage').textContent = `— ${STAGES[stage] || stage} ${done}/${total}`;
  $('live-card').hidden = false;
}

function blobUrl(bytes, type) {
  return bytes.length ? URL.createObjectURL(new Blob([bytes], { type })) : '';
}

/** Blob URLs of the shown results, revoked when the next ones replace them. */
let shownUrls = [];

/** Shows result `i` (of `state.results`) as the "after" of the comparison. */
function compare(i) {
  const r = state.results[i];
  $('after').src = r.url;
  $('compare-label').textContent = state.results.length > 1 ? `— ${r.label}` : '';
  document.querySelectorAll('#outputs .thumb').forEach((b, j) => b.setAttribute('aria-pressed', String(i === j)));
}

/** Puts the before image, one figure per result (clickable, downloadable) and the latents link on the page. */
function showResults(before, pngs, labels, latents, download) {
  for (const u of shownUrls) URL.revokeObjectURL(u);
  shownUrls = [];
  const url = (bytes, type) => {
    const u = blobUrl(bytes, type);
    if (u) shownUrls.push(u);
    return u;
  };
  $('before').src = url(before, 'image/png');
  state.results = pngs.map((png, i) => ({ url: url(png, 'image/png'), label: labels[i] }));
  const outputs = $('outputs');
  outputs.replaceChildren();
  state.results.forEach((r, i) => {
    const fig = document.createElement('figure');
    fig.className = 'result';
    fig.setAttribute('role', 'listitem');
    const thumb = document.createElement('button');
    thumb.className = 'thumb';
    thumb.type = 'button';
    thumb.title = `Compare ${r.label} with the photo`;
    const img = document.createElement('img');
    img.src = r.url;
    img.alt = r.label;
    thumb.append(img);
    thumb.onclick = () => compare(i);
    const caption = document.createElement('figcaption');
    caption.className = 'prompt';
    caption.textContent = pngs.length > 1 ? `${i + 1}. ${r.label}` : r.label;
    const a = document.createElement('a');
    a.className = 'button';
    a.id = `download-result-${i + 1}`;
    a.href = r.url;
    a.download = pngs.length > 1 ? `${download}-${i + 1}.png` : `${download}.png`;
    a.textContent = 'Download PNG';
    fig.append(thumb, caption, a);
    outputs.append(fig);
  });
  $('compare').classList.toggle('single', !state.results.length);
  if (state.results.length) compare(0);
  else {
    $('after').src = $('before').src;
    $('compare-label').textContent = '— the photo as the model sees it';
  }
  const l = $('download-latents');
  l.href = url(latents, 'application/octet-stream');
  l.hidden = !latents.length;
}

/**
 * Runs one operation: `start(options)` returns the wasm Promise of an Output; `labels(n)` names
 * its n result images, `download` their file names.
 */
async function run(label, start, { labels = () => [], download = 'edict', targets } = {}) {
  if (state.busy) return; // one operation at a time (the wasm session refuses a second one too)
  let options;
  try {
    options = readOptions();
    state.session.check(options, targets);
  } catch (e) {
    setState('invalid');
    return message(e.message);
  }
  state.busy = true;
  state.running = label;
  state.events.length = 0;
  state.previews = {};
  refresh();
  message('');
  setState('busy');
  $('results').classList.add('stale'); // the last results stay until the new ones replace them
  $('stage').textContent = `${label}…`;
  $('live-stage').textContent = '— waiting for the first step';
  const gen = generation;
  let out;
  try {
    out = await start(options);
    if (gen !== generation) return;
    const pngs = out.pngs;
    showResults(out.inputPng, pngs, labels(pngs.length), out.latents, download);
    const report = (state.report = JSON.parse(out.report));
    $('report').textContent = Object.entries(report)
      .map(([k, v]) => `${k}: ${typeof v === 'number' ? +v.toPrecision(4) : v}`)
      .join(' · ');
    if (out.warnings.length) message(out.warnings.join('\n'), 'note');
    $('results').hidden = false;
    $('stage').textContent = `${label}: done in ${report.seconds.toFixed(1)} s.`;
    $('live-stage').textContent = '— done';
    $('progress').value = 1;
    setState('done');
  } catch (e) {
    trapped ||= isTrap(e);
    if (gen !== generation) return;
    const msg = String(e.message || e);
    $('stage').textContent = msg === 'cancelled' ? 'Cancelled.' : '';
    $('live-stage').textContent = msg === 'cancelled' ? '— cancelled' : '— failed';
    if (msg !== 'cancelled') message(`${label} failed: ${msg}`);
    setState(msg === 'cancelled' ? 'cancelled' : 'failed');
    if (deviceGone(e)) await recover(label, e, true);
  } finally {
    // after a trap the page reloads, and the module's memory goes with it
    if (!trapped) out?.free();
    if (gen === generation) {
      $('results').classList.remove('stale');
      state.running = null;
      state.busy = false;
      refresh();
    }
  }
}

// ---- recovery: a lost GPU device, or a wasm panic that trapped the module ----

const isTrap = (e) => e instanceof WebAssembly.RuntimeError;
const deviceGone = (e) => isTrap(e) || /GPU device was lost/.test(String(e?.message || e));

/**
 * Nothing can run on a lost device again: start a new device, reload the last model from the
 * browser's cache or the picked files, and leave the page ready for the user to retry. A trapped
 * module cannot be trusted at all: the page reloads itself instead (reloadAfterTrap).
 */
async function recover(label, e, reload) {
  if (isTrap(e)) return reloadAfterTrap(label, e, reload);
  const why = String(e.message || e);
  generation += 1;
  state.running = null;
  state.busy = true;
  refresh();
  setState('recovering');
  state.session?.free();
  state.session = null;
  state.gpu?.free();
  state.gpu = null;
  $('gpu-status').textContent = 'Starting a new GPU device…';
  try {
    await startGpu();
    const last = state.lastLoad;
    if (reload && last) await loadModel(last.name, last.fill, last.source);
    if (reload && !state.session) return; // loadModel said why
    message(`${label} failed: ${why}. The page started a new GPU device` +
      (reload ? ` and reloaded the model: press ${label} again to retry.` : ': load the model again.'));
    setState('recovered');
  } catch (e2) {
    message(`${label} failed: ${why}, and no new GPU device could be started (${e2.message || e2}); reload the page.`);
    setState('failed');
  } finally {
    state.busy = false;
    refresh();
  }
}

// A panic inside a callback (cubecl's wgpu error handler, a map callback) traps there, not in
// the running operation, whose promise may never settle: the error reaches only these handlers.
function onTrap(error) {
  if (isTrap(error) && state.running) {
    trapped = true;
    recover(state.running, error, true);
  }
}
window.addEventListener('error', (ev) => onTrap(ev.error));
window.addEventListener('unhandledrejection', (ev) => onTrap(ev.reason));

// ---- after a trap: a fresh page, told what happened ----

// What the page keeps across that reload (in sessionStorage, the photo in the Cache API): the
// form, which model to load again, and why.
const RECOVERY = 'edict-recovery';
const FIELDS = ['source', 'reweight', 'method', 'steps', 'strength', 'mix', 'gamma', 'guidance', 'negative', 'width', 'height',
  'p2p-tokens-from', 'p2p-tokens-to', 'p2p-self-from', 'p2p-self-to', 'precision', 'model-url'];
let reloading = false;

/**
 * A trapped module keeps its memory (the model's GBs) as long as anything references it, and its
 * state cannot be trusted: reload the page, leaving a note for the fresh one, which shows what
 * failed, restores the form and the photo, and loads a downloaded model again from the cache
 * (`reload`: not after a trap while loading, which could trap again). Picked files cannot be
 * read again after a reload: the note asks for them.
 */
async function reloadAfterTrap(label, e, reload) {
  trapped = true;
  if (reloading) return;
  reloading = true;
  state.running = null;
  state.busy = true;
  setState('recovering');
  $('stage').textContent = 'The editor crashed: reloading the page…';
  const last = state.lastLoad;
  const note = {
    label,
    why: String(e.message || e),
    model: last && { name: last.name, source: last.source, load: reload && !!last.source },
    form: {
      values: Object.fromEntries(FIELDS.map((id) => [id, $(id).value])),
      p2p: $('p2p').checked,
      taesd: $('taesd').checked,
      settings: $('settings').open,
      targets: [...document.querySelectorAll('#targets .target')].map((i) => i.value),
    },
    photo: null,
  };
  try {
    if (state.image && 'caches' in self) {
      const c = await caches.open(RECOVERY);
      await c.put('photo', new Response(state.image, state.imageType ? { headers: { 'Content-Type': state.imageType } } : {}));
      note.photo = state.imageName || 'photo';
    }
  } catch {
    note.photo = null; // the note asks for the photo again
  }
  try {
    sessionStorage.setItem(RECOVERY, JSON.stringify(note));
  } catch (e2) {
    message(`${label} failed: the editor crashed (${note.why}); reload the page to go on.`);
    setState('failed');
    return;
  }
  location.reload();
}

/** The note a crashed page left (removed, so a later reload starts clean), or null. */
function takeRecoveryNote() {
  try {
    const text = sessionStorage.getItem(RECOVERY);
    sessionStorage.removeItem(RECOVERY);
    return text ? JSON.parse(text) : null;
  } catch {
    return null;
  }
}

/** Restores what the crashed page had and says what happened; loads its downloaded model again. */
async function resumeAfterTrap(note) {
  const f = note.form || {};
  for (const [id, v] of Object.entries(f.values || {})) if ($(id)) $(id).value = v;
  $('p2p').checked = !!f.p2p;
  $('taesd').checked = !!f.taesd;
  $('settings').open = !!f.settings;
  if (f.targets?.length) {
    $('targets').replaceChildren();
    for (const t of f.targets) addTarget(t);
  }
  let photo = false;
  if (note.photo && 'caches' in self) {
    try {
      const c = await caches.open(RECOVERY);
      const r = await c.match('photo');
      if (r) {
        const blob = await r.blob();
        await setImage(new File([blob], note.photo, { type: blob.type }));
        photo = !!state.image;
      }
    } catch {
      // asked for below
    }
    caches.delete(RECOVERY).catch(() => {});
  }
  const crash = `${note.label} failed: the editor crashed (${note.why}).`;
  const m = note.model;
  let text;
  if (!state.gpu) text = `${crash} The page was reloaded, but ${$('message').textContent}`;
  else if (m?.load) {
    await loadModel(m.name, (b, s, begin) => loadFromUrl(b, m.source.url, candidates(m.source.precision), s, { begin }), m.source);
    const said = $('message').hidden ? '' : `\n${$('message').textContent}`;
    text = state.session
      ? `${crash} The page was reloaded and the model loaded again: press ${note.label} again to retry.${said}`
      : `${crash} The page was reloaded, but the model did not load again:${said}`;
  } else if (m && !m.source) {
    text = `${crash} The page was reloaded: pick the model files again (${m.name}; a reloaded page cannot read files picked before).`;
  } else {
    text = `${crash} The page was reloaded: load the model again.`;
  }
  if (note.photo && !photo) text += ' Pick the photo again.';
  message(text);
  setState(state.gpu ? 'recovered' : 'failed');
  refresh();
}

const src = () => $('source').value;
/** Edits into the target list (read when pressed); `targets` is what the results are labelled with. */
function editRun(label, start) {
  let targets;
  try {
    targets = readTargets();
  } catch (e) {
    setState('invalid');
    return message(e.message);
  }
  return run(label, (o) => start(targets, o), {
    labels: () => targets,
    download: 'edict-edit',
    targets,
  });
}
$('edit').onclick = () => editRun('Edit', (targets, o) => state.session.edit(state.image, src(), targets, o, onProgress));
$('invert').onclick = () => run('Invert', (o) => state.session.invert(state.image, src(), o, onProgress));
$('reconstruct').onclick = () => run('Reconstruct', (o) => state.session.reconstruct(state.image, src(), o, onProgress),
  { labels: () => ['reconstruction'], download: 'edict-reconstruction' });
$('latents-input').onchange = async (e) => {
  const f = e.target.files[0];
  e.target.value = '';
  if (f) {
    const bytes = new Uint8Array(await f.arrayBuffer());
    editRun('Edit saved latents', (targets, o) => state.session.editLatents(bytes, targets, o, onProgress));
  }
};
$('cancel').onclick = () => state.session?.cancel();
$('slider').oninput = (e) => $('compare').style.setProperty('--split', `${e.target.value}%`);

// ---- start ----

addTarget('a photo of a dog');
if (params.get('model')) $('model-url').value = params.get('model');
if (params.get('precision')) $('precision').value = params.get('precision');
const recovery = takeRecoveryNote();
try {
  await startGpu();
  const d = wasm.defaultOptions();
  for (const k of ['method', 'steps', 'strength', 'mix', 'gamma', 'guidance']) $(k).value = d.settings[k];
  for (const name of ['tokens', 'self']) {
    [$(`p2p-${name}-from`).value, $(`p2p-${name}-to`).value] = d.controls[`p2p_${name}`].split(':');
  }
  setState('ready');
} catch (e) {
  $('gpu-status').textContent = 'No usable GPU.';
  message(String(e.message || e));
  setState(state.gpu ? 'failed' : 'no-webgpu');
}
refresh();
if (recovery) await resumeAfterTrap(recovery);
