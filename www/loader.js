// Model files for the wasm ModelBuilder: downloaded from a diffusers folder's base URL (kept in
// the Cache API, in 64 MiB range chunks so a reload resumes a half-done download), or read from
// files the user picked (a diffusers folder or one .safetensors checkpoint).

export const SD15 = {
  name: 'stable-diffusion-v1-5/stable-diffusion-v1-5',
  base: 'https://huggingface.co/stable-diffusion-v1-5/stable-diffusion-v1-5/resolve/main/',
  // fp16 files first: 2 GB instead of 4 GB, and they upcast to f32 on adapters without shader-f16
  precision: 'f16',
};

const CACHE = 'edict-models-v1';
const CHUNK = 64 << 20;
const COMPONENTS = ['text_encoder', 'unet', 'vae'];
// Read when the folder has them: the tokenizer (else the built-in CLIP vocabulary; SD 2.x names
// its own pad token) and the scheduler config (SD 2.x at 768² predicts v, not ε).
const OPTIONAL = ['tokenizer/vocab.json', 'tokenizer/merges.txt', 'tokenizer/special_tokens_map.json',
  'tokenizer/tokenizer_config.json', 'scheduler/scheduler_config.json'];


async function openCache() {
  // The Cache API exists only in secure contexts (https, localhost); elsewhere just download.
  if (!('caches' in self)) return null;
  navigator.storage?.persist?.().catch(() => {});
  return caches.open(CACHE);
}

/**
 * Stores a response in `store.cache`. The cache must never be why a model cannot load (quota,
 * or Chromium's "Unexpected internal error" on multi-GB models): a failed put turns caching off
 * for the rest of the load and leaves a note for the page.
 */
async function tryPut(store, key, response) {
  if (!store.cache) return;
  try {
    await store.cache.put(key, response);
  } catch (e) {
    store.cache = null;
    store.note = `The browser's download cache failed (${e.message || e}), so this model was loaded without caching: a reload downloads it again.`;
  }
}

/**
 * Downloads `url` (or reads it from `store.cache`); resolves to its bytes, or null on 404.
 * onBytes(received, total|0) reports progress for this file.
 */
async function fetchFile(store, url, onBytes) {
  const cache = store.cache;
  const manifestKey = `${url}?edict-chunks`;
  const chunkKey = (i) => `${url}?edict-chunk=${i}`;
  const chunks = [];
  let received = 0;
  let total = 0;
  const manifest = cache && (await cache.match(manifestKey));
  if (manifest) {
    const { count, size } = await manifest.json();
    for (let i = 0; i < count; i++) {
      const r = await cache.match(chunkKey(i));
      if (!r) break;
      chunks.push(await r.blob());
    }
    if (chunks.length === count) {
      onBytes(size, size);
      return new Uint8Array(await new Blob(chunks).arrayBuffer());
    }
    chunks.length = 0;
  } else if (cache) {
    // a download interrupted by a reload: keep the chunks it finished
    for (let i = 0; ; i++) {
      const r = await cache.match(chunkKey(i));
      if (!r) break;
      const b = await r.blob();
      chunks.push(b);
      received += b.size;
    }
  }
  for (;;) {
    const start = chunks.length * CHUNK;
    const res = await fetch(url, { headers: { Range: `bytes=${start}-${start + CHUNK - 1}` } });
    if (res.status === 404) return null;
    if (res.status === 416) break; // the size was a multiple of CHUNK
    if (!res.ok) throw new Error(`${url}: HTTP ${res.status} ${res.statusText}`);
    const ranged = res.status === 206;
    const whole = !ranged && start > 0;
    if (whole) throw new Error(`${url}: the server stopped honouring range requests; clear the site's data and retry`);
    const m = /\/(\d+)$/.exec(res.headers.get('Content-Range') || '');
    total = m ? +m[1] : ranged ? 0 : +(res.headers.get('Content-Length') || 0);
    const blob = await readWithProgress(res, (n) => onBytes(received + n, total));
    received += blob.size;
    chunks.push(blob);
    await tryPut(store, chunkKey(chunks.length - 1), new Response(blob));
    if (!ranged || blob.size < CHUNK) break;
  }
  await tryPut(store, manifestKey, new Response(JSON.stringify({ count: chunks.length, size: received })));
  onBytes(received, received);
  return new Uint8Array(await new Blob(chunks).arrayBuffer());
}

async function readWithProgress(res, onBytes) {
  if (!res.body) return res.blob();
  const reader = res.body.getReader();
  const parts = [];
  let n = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    parts.push(value);
    n += value.length;
    onBytes(n);
  }
  return new Blob(parts);
}

/**
 * Fetches a diffusers folder at `base` into `builder` (configs, one weight file per network, the
 * first of `candidates(component)` the server has — the CLI's rule, from the wasm module — and
 * the tokenizer and scheduler files when the folder has them). onProgress(text, fraction|null).
 * Resolves to a note for the user (the cache failed), or null.
 */
export async function loadFromUrl(builder, base, candidates, onProgress) {
  if (!base.endsWith('/')) base += '/';
  const store = { cache: await openCache().catch(() => null), note: null };
  const want = [];
  for (const c of COMPONENTS) {
    want.push({ path: `${c}/config.json`, required: true });
    want.push({ candidates: candidates(c), required: true });
  }
  for (const path of OPTIONAL) want.push({ path });
  let i = 0;
  for (const w of want) {
    i++;
    let got = null;
    for (const path of w.candidates || [w.path]) {
      const url = new URL(path, new URL(base, location.href)).href;
      const bytes = await fetchFile(store, url, (n, total) =>
        onProgress(`downloading ${path} (file ${i}/${want.length}): ${mib(n)}${total ? ' of ' + mib(total) : ''}`, total ? n / total : null),
      );
      if (bytes) {
        got = path;
        builder.add(path, bytes);
        break;
      }
    }
    if (!got && w.required) {
      throw new Error(`${base}: not found: ${(w.candidates || [w.path]).join(' or ')} (is this a diffusers model folder?)`);
    }
  }
  return store.note;
}

/** Deletes every cached model file. */
export async function clearCache() {
  if ('caches' in self) await caches.delete(CACHE);
}

/**
 * Adds user-picked files: one .safetensors checkpoint, or the files of a diffusers folder (from a
 * webkitdirectory input; only the files the model needs are read, the weights by
 * `candidates(component)` as in loadFromUrl). Resolves to null (no note).
 */
export async function loadFromFiles(builder, fileList, candidates, onProgress) {
  const files = [...fileList];
  if (files.length === 1 && !files[0].webkitRelativePath) {
    const f = files[0];
    if (!f.name.endsWith('.safetensors')) {
      throw new Error(`${f.name}: pick a .safetensors checkpoint (pickle files such as .ckpt are never loaded)`);
    }
    onProgress(`reading ${f.name}`, null);
    builder.add(f.name, new Uint8Array(await f.arrayBuffer()));
    return null;
  }
  // "folder/unet/config.json" -> "unet/config.json"
  const byPath = new Map(files.map((f) => [f.webkitRelativePath.split('/').slice(1).join('/'), f]));
  const root = files[0]?.webkitRelativePath.split('/')[0] || 'model';
  const picks = [];
  for (const c of COMPONENTS) {
    picks.push(`${c}/config.json`);
    const w = candidates(c).find((p) => byPath.has(p));
    if (w) picks.push(w);
    // no safetensors: hand over the other weight files' names only, for the builder to refuse
    else for (const p of byPath.keys()) if (p.startsWith(`${c}/`) && !p.endsWith('.json')) builder.add(p, new Uint8Array());
  }
  picks.push(...OPTIONAL);
  for (const [i, p] of picks.entries()) {
    const f = byPath.get(p);
    if (!f) continue;
    onProgress(`reading ${root}/${p}`, i / picks.length);
    builder.add(p, new Uint8Array(await f.arrayBuffer()));
  }
  return null;
}

function mib(n) {
  return `${(n / (1 << 20)).toFixed(1)} MiB`;
}
