// The page: WebGPU checks, model loading, the photo and prompts, and the edit with its progress.
// `window.edict` exposes the state (GPU info, progress events) for debugging and the browser test.
import * as firstInstance from './pkg/edict_web.js';
import { SD15, clearCache, loadFromFiles, loadFromUrl } from './loader.js';

// The wasm module in use. After a panic its state cannot be trusted, so recovery imports a
// fresh instance; `generation` counts recoveries, so an operation that outlives one (a trap can
// leave it running in the old instance) leaves the page alone.
let wasm = firstInstance;
let instances = 0;
let generation = 0;

const $ = (id) => document.getElementById(id);
const state = (window.edict = { gpu: null, gpuInfo: null, session: null, events: [], image: null, busy: false, lastLoad: null, running: null, report: null });
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
  for (const id of ['load-sd15', 'load-url', 'clear-cache', 'model-folder', 'model-file', 'precision']) $(id).disabled = !idle;
  const ready = idle && !!state.session;
  $('edit').disabled = $('invert').disabled = $('reconstruct').disabled = !(ready && state.image);
  $('latents-input').disabled = !ready;
  $('cancel').disabled = !state.busy || !state.session;
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
  state.gpu = await wasm.initGpu();
  const info = (state.gpuInfo = JSON.parse(state.gpu.info()));
  // wgpu leaves the adapter's name empty in browsers; WebGPU's own GPUAdapterInfo has it
  const ai = adapter.info || {};
  info.adapter ||= ai.description || [ai.vendor, ai.architecture, ai.device].filter(Boolean).join(' ') || 'WebGPU adapter';
  $('gpu-status').textContent = `GPU: ${info.adapter}; shader-f16: ${info.shader_f16 ? 'yes' : 'no'}; ` +
    `largest storage buffer ${mib(Math.min(info.max_storage_buffer_binding_size, info.max_buffer_size))}.`;
  if (!info.shader_f16) {
    message('This GPU has no shader-f16: the networks run in f32, which needs twice the GPU memory (≈4 GB for SD 1.5) and is slower.', 'note');
  }
}

// ---- model ----

async function loadModel(name, fill) {
  state.busy = true;
  state.session?.free();
  state.session = null;
  state.lastLoad = { name, fill };
  refresh();
  message('');
  setState('loading');
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
    const note = await fill(builder, status);
    status('loading the networks onto the GPU…', null);
    await new Promise((r) => setTimeout(r, 0)); // let the status paint: building blocks the tab
    const b = builder;
    builder = null; // build() consumes it, even when it fails
    const session = b.build(state.gpu, $('precision').value);
    state.session = session;
    status(`Loaded ${name} (${session.precision}).`, 1);
    const notes = [note, session.loadWarning].filter(Boolean);
    if (notes.length) message(notes.join('\n'), 'note');
    setState('model-loaded');
  } catch (e) {
    if (!isTrap(e)) builder?.free(); // a failed download: drop the bytes gathered so far
    status('No model loaded.', 0);
    message(`Could not load the model: ${e.message || e}`);
    setState('load-failed');
    if (deviceGone(e)) await recover('Loading the model', e, false);
  } finally {
    bar.hidden = true;
    state.busy = false;
    refresh();
  }
}

function precision() {
  const p = $('precision').value;
  return p === 'auto' ? (state.gpu.shaderF16 ? 'f16' : 'f32') : p;
}

/** A component's weight files in the order the CLI tries them (the rule lives in the wasm module). */
const candidates = (p) => (component) => wasm.weightCandidates(component, p);

$('load-sd15').onclick = () => loadModel(SD15.name, (b, s) => loadFromUrl(b, SD15.base, candidates(SD15.precision), s));
$('load-url').onclick = () => {
  const url = $('model-url').value.trim();
  if (!url) return message('Enter the base URL of a diffusers model folder.');
  loadModel(url, (b, s) => loadFromUrl(b, url, candidates(precision()), s));
};
for (const id of ['model-folder', 'model-file']) {
  $(id).onchange = (ev) => {
    const files = ev.target.files;
    if (files.length) loadModel(files[0].webkitRelativePath.split('/')[0] || files[0].name, (b, s) => loadFromFiles(b, files, candidates(precision()), s));
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
  const p = $('preview');
  URL.revokeObjectURL(p.src);
  p.src = URL.createObjectURL(file);
  p.hidden = false;
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
$('image-input').onchange = (e) => e.target.files[0] && setImage(e.target.files[0]);

// ---- settings: the CLI's defaults come from the wasm Options ----

function readOptions() {
  const o = new wasm.Options();
  const num = (id, integer) => {
    const v = $(id).value.trim();
    const n = Number(v);
    if (v === '' || !Number.isFinite(n) || (integer && !Number.isInteger(n))) throw new Error(`${id}: "${v}" is not a valid number`);
    return n;
  };
  o.steps = num('steps', true);
  o.strength = num('strength');
  o.mix = num('mix');
  o.guidance = num('guidance');
  o.negative = $('negative').value;
  const w = $('width').value.trim(), h = $('height').value.trim();
  if (w || h) {
    if (!w || !h) throw new Error('Give both width and height, or neither.');
    o.width = num('width', true);
    o.height = num('height', true);
  }
  return o;
}

// ---- operations ----

function onProgress(stage, done, total) {
  state.events.push({ stage, done, total, t: performance.now() });
  $('progress').value = total ? done / total : 0;
  const what = { encode: 'encoding the photo', invert: 'inverting', edit: 'editing', reconstruct: 'reconstructing', decode: 'decoding' }[stage] || stage;
  $('stage').textContent = stage === 'encode' || stage === 'decode' ? `${what}…` : `${what}: UNet call ${done}/${total}`;
}

function show(url, id) {
  const a = $(id);
  if (a.href) URL.revokeObjectURL(a.href);
  a.href = url;
  a.hidden = !url;
}

function blobUrl(bytes, type) {
  return bytes.length ? URL.createObjectURL(new Blob([bytes], { type })) : '';
}

async function run(label, start) {
  let options;
  try {
    options = readOptions();
  } catch (e) {
    return message(e.message);
  }
  state.busy = true;
  state.running = label;
  state.events.length = 0;
  refresh();
  message('');
  setState('busy');
  $('stage').textContent = `${label}…`;
  const gen = generation;
  try {
    const out = await start(options);
    if (gen !== generation) return;
    options.free();
    const before = blobUrl(out.inputPng, 'image/png');
    const after = blobUrl(out.png, 'image/png');
    $('before').src = before;
    $('after').src = after || before;
    show(after, 'download-result');
    show(blobUrl(out.latents, 'application/octet-stream'), 'download-latents');
    const report = (state.report = JSON.parse(out.report));
    $('report').textContent = Object.entries(report)
      .map(([k, v]) => `${k}: ${typeof v === 'number' ? +v.toPrecision(4) : v}`)
      .join(' · ');
    if (out.warnings.length) message(out.warnings.join('\n'), 'note');
    $('results').hidden = false;
    $('stage').textContent = `${label}: done in ${report.seconds.toFixed(1)} s.`;
    $('progress').value = 1;
    out.free();
    setState('done');
  } catch (e) {
    if (gen !== generation) return;
    const msg = String(e.message || e);
    $('stage').textContent = msg === 'cancelled' ? 'Cancelled.' : '';
    if (msg !== 'cancelled') message(`${label} failed: ${msg}`);
    setState(msg === 'cancelled' ? 'cancelled' : 'failed');
    if (deviceGone(e)) await recover(label, e, true);
  } finally {
    if (gen === generation) {
      state.running = null;
      state.busy = false;
      refresh();
    }
  }
}

// ---- recovery: a lost GPU device, or a wasm panic that trapped the instance ----

const isTrap = (e) => e instanceof WebAssembly.RuntimeError;
const deviceGone = (e) => isTrap(e) || /GPU device was lost/.test(String(e?.message || e));

/**
 * Nothing can run on a lost device (or in a trapped instance) again: start a new device (in a
 * fresh wasm instance after a trap), reload the last model from the browser's cache or the
 * picked files, and leave the page ready for the user to retry.
 */
async function recover(label, e, reload) {
  const why = isTrap(e) ? `the editor crashed (${e.message})` : String(e.message || e);
  generation += 1;
  state.running = null;
  state.busy = true;
  refresh();
  setState('recovering');
  if (!isTrap(e)) state.session?.free();
  state.session = null;
  state.gpu = null;
  $('gpu-status').textContent = 'Starting a new GPU device…';
  try {
    if (isTrap(e)) wasm = await import(`./pkg/edict_web.js?instance=${++instances}`);
    await startGpu();
    if (reload && state.lastLoad) await loadModel(state.lastLoad.name, state.lastLoad.fill);
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
    $('stage').textContent = '';
    recover(state.running, error, true);
  }
}
window.addEventListener('error', (ev) => onTrap(ev.error));
window.addEventListener('unhandledrejection', (ev) => onTrap(ev.reason));

const src = () => $('source').value;
$('edit').onclick = () => run('Edit', (o) => state.session.edit(state.image, src(), $('target').value, o, onProgress));
$('invert').onclick = () => run('Invert', (o) => state.session.invert(state.image, src(), o, onProgress));
$('reconstruct').onclick = () => run('Reconstruct', (o) => state.session.reconstruct(state.image, src(), o, onProgress));
$('latents-input').onchange = async (e) => {
  const f = e.target.files[0];
  e.target.value = '';
  if (f) {
    const bytes = new Uint8Array(await f.arrayBuffer());
    run('Edit saved latents', () => state.session.editLatents(bytes, $('target').value, onProgress));
  }
};
$('cancel').onclick = () => state.session?.cancel();
$('slider').oninput = (e) => $('compare').style.setProperty('--split', `${e.target.value}%`);

// ---- start ----

if (params.get('model')) $('model-url').value = params.get('model');
if (params.get('precision')) $('precision').value = params.get('precision');
try {
  await startGpu();
  const d = new wasm.Options();
  for (const k of ['steps', 'strength', 'mix', 'guidance']) $(k).value = d[k];
  d.free();
  setState('ready');
} catch (e) {
  $('gpu-status').textContent = 'No usable GPU.';
  message(String(e.message || e));
  setState(state.gpu ? 'failed' : 'no-webgpu');
}
refresh();
