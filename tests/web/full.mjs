// Full-size browser check (run by scripts/test-full.sh; not part of `./build.sh test`):
//   node tests/web/full.mjs MODEL_DIR
// MODEL_DIR is an SD 1.5- or SDXL-shaped diffusers folder with .fp16.safetensors weight files
// (e.g. from scripts/make_full_size.py [--sdxl]). Its fp16 view (configs, tokenizers and the fp16
// weight files only, as symbolic links) is served on 127.0.0.1 next to www/; headless Chromium
// (WebGPU on SwiftShader) loads it through the page's URL loader, which streams: configs first,
// then each weight file in chunks, every tensor to the GPU as its bytes arrive. Prints the load time and the wasm
// memory (WebAssembly.Memory's buffer, which only grows, so its size is the peak), then edits a
// 64x64 photo (4 steps, strength 0.5) and checks the inverted pair in the page's latents file
// against `edict edit --backend cpu --save-latents` on the same fp16 files (<= 1e-3 relative).
// Env: EDICT_FULL_STEPS (4; 2 gives 1 step at strength 0.5, half the UNet calls), EDICT_FULL_EDIT
// (1; 0 stops after the load and its wasm memory: no edit, no CLI comparison), EDICT_FULL_TIMEOUT_S
// (limit for the load and for the edit, 5400), EDICT_BIN (the CLI; default $CARGO_TARGET_DIR or ~/.cache/edict/target, release/edict),
// EDICT_WASM_LIMIT_GIB (default 2.5), EDICT_FULL_JSON (write the measurements there as JSON).
// Exits 1 with the failed checks listed; every failure is a message, not a stack trace.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ROOT, fillForm, launch, makePng, readLatents, relErr, serve, waitState } from './common.mjs';

const SOURCE = 'a photo of a cat', TARGET = 'a photo of a dog';
const STEPS = Number(process.env.EDICT_FULL_STEPS || 4), STRENGTH = 0.5, SIZE = 64;
const EDIT = process.env.EDICT_FULL_EDIT !== '0';
// SwiftShader runs a full-size UNet call on an 8x8 latent in minutes: generous limits
const TIMEOUT_MS = Number(process.env.EDICT_FULL_TIMEOUT_S || 5400) * 1000;
const LIMIT_GIB = Number(process.env.EDICT_WASM_LIMIT_GIB || 2.5);
const TARGET_DIR = process.env.CARGO_TARGET_DIR || path.join(os.homedir(), '.cache/edict/target');
const EDICT = process.env.EDICT_BIN || path.join(TARGET_DIR, 'release/edict');
const GIB = 1024 ** 3;
const t0 = Date.now();
const secs = (t) => (Date.now() - t) / 1000;
const failures = [];
const results = {};
let child = null;
let tmp = null; // removed on exit: the browser profile holds a 2 GB download cache

function check(ok, what) {
  console.log(`${ok ? 'ok  ' : 'FAIL'} ${what}`);
  if (!ok) failures.push(what);
  return ok;
}

/**
 * The fp16 view of `dir` under `tmp`: configs, tokenizer and scheduler files, and per network only
 * its .fp16.safetensors weight file (as links), so the page and the CLI read the same weights.
 */
function fp16View(dir, tmp) {
  const view = path.join(tmp, 'model-fp16');
  fs.mkdirSync(view);
  let weights = 0;
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const src = path.join(dir, e.name);
    if (!e.isDirectory()) {
      fs.symlinkSync(src, path.join(view, e.name));
      continue;
    }
    fs.mkdirSync(path.join(view, e.name));
    for (const f of fs.readdirSync(src)) {
      const weight = /\.(safetensors|bin|ckpt)$/.test(f);
      if (weight && !f.endsWith('.fp16.safetensors')) continue;
      if (weight) weights++;
      fs.symlinkSync(path.join(src, f), path.join(view, e.name, f));
    }
  }
  if (weights < 3) throw new Error(`${dir}: expected .fp16.safetensors weight files for text_encoder, unet and vae, found ${weights}`);
  return view;
}

/** Runs the CLI; resolves to its wall time in seconds, rejects with a message. */
function cli(args) {
  return new Promise((resolve, reject) => {
    const t = Date.now();
    child = spawn(EDICT, args, { cwd: ROOT, stdio: ['ignore', 'inherit', 'inherit'] })
      .on('error', (e) => reject(new Error(`could not run ${EDICT}: ${e.message} (build it with ./build.sh release, or set EDICT_BIN)`)))
      .on('exit', (code, sig) => {
        child = null;
        code === 0 ? resolve(secs(t)) : reject(new Error(`edict ${args[0]} exited with ${code ?? sig}`));
      });
  });
}

/** Waits for one of `states`, printing the page's status line every 30 s. */
async function waitLogged(page, states, timeout, status) {
  const t = Date.now();
  const timer = setInterval(async () => {
    const s = await page.evaluate((id) => [document.getElementById(id)?.textContent, window.__wasmMemory?.buffer.byteLength], status).catch(() => null);
    if (s) console.log(`  … ${secs(t).toFixed(0)} s: ${s[0]} (wasm memory ${(s[1] / GIB).toFixed(2)} GiB)`);
  }, 30_000);
  try {
    return await waitState(page, states, timeout, 500);
  } finally {
    clearInterval(timer);
  }
}

const wasmBytes = (page) => page.evaluate(() => window.__wasmMemory?.buffer.byteLength ?? null);

async function browser(base, photo, tmp) {
  const { ctx, page } = await launch(tmp, ['--enable-unsafe-webgpu', '--use-webgpu-adapter=swiftshader']);
  page.on('console', (m) => ['error', 'warning'].includes(m.type()) && !/status of 404/.test(m.text()) && console.log(`  [browser ${m.type()}] ${m.text()}`));
  page.on('pageerror', (e) => console.log(`  [page error] ${e.message}`));
  // the module's WebAssembly.Memory, from its instantiation (wasm-bindgen's init does not return it to the page)
  await page.addInitScript(() => {
    // the model status lines, to say where a failed load stopped
    window.__statusLog = [];
    document.addEventListener('DOMContentLoaded', () => {
      const el = document.getElementById('model-status');
      new MutationObserver(() => {
        const s = el.textContent, log = window.__statusLog;
        if (log.at(-1)?.split(':')[0] !== s.split(':')[0]) log.push(s);
        else log[log.length - 1] = s;
      }).observe(el, { childList: true, characterData: true, subtree: true });
    });
    for (const name of ['instantiateStreaming', 'instantiate']) {
      const f = WebAssembly[name];
      WebAssembly[name] = async function (...args) {
        const r = await f.apply(this, args);
        const exports = (r.instance || r).exports;
        if (exports?.memory instanceof WebAssembly.Memory) window.__wasmMemory = exports.memory;
        return r;
      };
    }
  });
  try {
    // precision auto: f32 networks on SwiftShader (no shader-f16); the view offers only fp16 files
    await page.goto(`${base}/www/index.html?model=../model/&precision=auto`);
    const started = await waitState(page, ['ready', 'no-webgpu', 'failed'], 120_000);
    const gpu = await page.textContent('#gpu-status');
    if (!check(started === 'ready', `page starts with WebGPU (state ${started}; ${gpu})`)) return;
    const before = await wasmBytes(page);
    if (!check(before != null, `the wasm module's memory is readable (${(before / GIB).toFixed(3)} GiB after start)`)) return;

    let t = Date.now();
    await page.click('#load-url');
    const loaded = await waitLogged(page, ['load-failed', 'model-loaded'], TIMEOUT_MS, 'model-status');
    results.web_load_s = secs(t);
    results.web_wasm_after_load_gib = (await wasmBytes(page)) / GIB;
    const status = await page.textContent('#model-status');
    const note = await page.textContent('#message');
    if (!check(loaded === 'model-loaded', `fp16 folder loads from URLs in ${results.web_load_s.toFixed(1)} s: "${status}"`)) {
      console.log(`  message: ${note}\n  the load's last steps:\n    ${(await page.evaluate(() => window.__statusLog)).slice(-4).join('\n    ')}`);
      return;
    }
    if (note.trim()) console.log(`  page note: ${note.trim()}`);
    check(results.web_wasm_after_load_gib <= LIMIT_GIB,
      `wasm memory after loading: ${results.web_wasm_after_load_gib.toFixed(3)} GiB (<= ${LIMIT_GIB} GiB)`);
    if (!EDIT) return;

    await fillForm(page, photo, { source: SOURCE, target: TARGET, steps: STEPS, strength: STRENGTH, size: SIZE });
    t = Date.now();
    await page.click('#edit');
    // 'recovered': the device was lost (the GPU process gone) and the page is ready to retry
    const done = await waitLogged(page, ['done', 'failed', 'cancelled', 'recovered'], TIMEOUT_MS, 'stage');
    results.web_edit_s = secs(t);
    results.web_wasm_peak_gib = (await wasmBytes(page)) / GIB;
    if (!check(done === 'done', `edit of a ${SIZE}x${SIZE} photo (${STEPS} steps, strength ${STRENGTH}) in ${results.web_edit_s.toFixed(1)} s: ${await page.textContent('#stage')}`)) {
      return console.log(`  message: ${await page.textContent('#message')}`);
    }
    check(results.web_wasm_peak_gib <= LIMIT_GIB, `wasm memory after the edit (the peak): ${results.web_wasm_peak_gib.toFixed(3)} GiB (<= ${LIMIT_GIB} GiB)`);
    const file = path.join(tmp, 'web-latents.safetensors');
    const [d] = await Promise.all([page.waitForEvent('download', { timeout: 60_000 }), page.click('#download-latents')]);
    await d.saveAs(file);
    return file;
  } finally {
    await ctx.close().catch(() => {});
  }
}

async function main() {
  const dir = process.argv[2] && path.resolve(process.argv[2]);
  if (!dir || !fs.existsSync(path.join(dir, 'model_index.json'))) {
    throw new Error(`usage: node tests/web/full.mjs MODEL_DIR (a diffusers folder with model_index.json; got ${dir || 'nothing'})`);
  }
  if (!fs.existsSync(path.join(ROOT, 'www/pkg/edict_web.js'))) throw new Error('www/pkg/ is missing: run ./build.sh web first');
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'edict-full-'));
  const view = fp16View(dir, tmp);
  const photo = path.join(tmp, 'photo.png');
  makePng(photo, SIZE);

  const server = await serve({ '/www/': path.join(ROOT, 'www'), '/model/': view });
  try {
    const webFile = await browser(`http://127.0.0.1:${server.address().port}`, photo, tmp);
    if (webFile) {
      // then the CLI (not at the same time: they would share this machine's cores)
      const cliFile = path.join(tmp, 'cli-latents.safetensors');
      results.cli_edit_s = await cli(['edit', '--backend', 'cpu', '--model', view, '--image', photo, '--source', SOURCE, '--target', TARGET,
        '--steps', `${STEPS}`, '--strength', `${STRENGTH}`, '--width', `${SIZE}`, '--height', `${SIZE}`, '--quiet',
        '--save-latents', cliFile, '--out', path.join(tmp, 'cli-edit.png')]);
      console.log(`ok   native CLI edit (cpu, fp16 files run in f32) in ${results.cli_edit_s.toFixed(1)} s`);

      const [a, b] = [readLatents(webFile), readLatents(cliFile)];
      for (const k of ['x', 'y', 'x_lo', 'y_lo']) check(a[k] && b[k], `latents files have ${k} (page ${!!a[k]}, CLI ${!!b[k]})`);
      // x_lo, y_lo are the low parts of the double-double pair: rounding residues, compared as x + x_lo
      for (const k of ['x', 'y']) {
        const sum = (l) => l[k] && l[`${k}_lo`] && l[k].map((v, i) => v + l[`${k}_lo`][i]);
        const e = relErr(sum(a) || a[k], sum(b) || b[k]);
        results[`rel_err_${k}`] = e;
        check(e <= 1e-3, `inverted ${k} (+ ${k}_lo) vs the CLI's: relative difference ${e.toExponential(2)} (<= 1e-3)`);
      }
    }
  } finally {
    server.close();
  }
}

const cleanup = () => tmp && fs.rmSync(tmp, { recursive: true, force: true });
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => { child?.kill(); process.exit(130); });
process.on('exit', () => { child?.kill(); cleanup(); });
try {
  await main();
} catch (e) {
  child?.kill();
  check(false, e.message || String(e));
}
results.total_s = secs(t0);
if (process.env.EDICT_FULL_JSON) fs.writeFileSync(process.env.EDICT_FULL_JSON, JSON.stringify(results, null, 2));
const f = (v, d = 1) => (v == null ? '—' : v.toFixed(d));
console.log(`\nweb: load ${f(results.web_load_s)} s, wasm memory ${f(results.web_wasm_after_load_gib, 3)} GiB after load / ` +
  `${f(results.web_wasm_peak_gib, 3)} GiB peak, edit ${f(results.web_edit_s)} s; CLI edit ${f(results.cli_edit_s)} s; ` +
  `total ${f(results.total_s)} s`);
if (failures.length) {
  console.log(`${failures.length} failed:\n  ${failures.join('\n  ')}`);
  process.exit(1);
}
console.log('all full-size browser checks passed');
