// Model files for the wasm ModelBuilder: downloaded from a diffusers folder's base URL (kept in
// the Cache API, in 64 MiB range chunks so a reload resumes a half-done download, with each
// file's version so a file changed on the server is downloaded again), or read from files the
// user picked (a diffusers folder, one .safetensors checkpoint, or configs with a checkpoint).

// The page's one-click models, from Hugging Face (its resolve/ URLs allow cross-origin reads with
// ranges), in their fp16 files: half the download, upcast to f32 on adapters without shader-f16.
export const SD15 = {
  name: 'stable-diffusion-v1-5/stable-diffusion-v1-5',
  base: 'https://huggingface.co/stable-diffusion-v1-5/stable-diffusion-v1-5/resolve/main/',
  precision: 'f16',
};
export const SDXL = {
  name: 'stabilityai/stable-diffusion-xl-base-1.0',
  base: 'https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0/resolve/main/',
  precision: 'f16',
};

// v2 records each file's version (size, ETag, Last-Modified) with its chunks; v1's chunks had
// none, so they can never be checked against the server and are dropped.
const CACHE = 'edict-models-v2';
const OLD_CACHES = ['edict-models-v1'];
const CHUNK = 64 << 20;
const COMPONENTS = ['text_encoder', 'unet', 'vae'];
// SDXL's second text encoder: a network of the model when its config is in the folder
const SDXL_COMPONENT = 'text_encoder_2';
const tokenizerFiles = (dir) => ['vocab.json', 'merges.txt', 'special_tokens_map.json', 'tokenizer_config.json'].map((f) => `${dir}/${f}`);
// Read when the folder has them: the tokenizer (else the built-in CLIP vocabulary; SD 2.x names
// its own pad token), the scheduler config (SD 2.x at 768² predicts v, not ε), and SDXL's
// pipeline index (force_zeros_for_empty_prompt), second text encoder's config and tokenizer.
const OPTIONAL = [...tokenizerFiles('tokenizer'), 'scheduler/scheduler_config.json', 'model_index.json',
  `${SDXL_COMPONENT}/config.json`, ...tokenizerFiles('tokenizer_2')];
// The largest file the page reads whole (a single checkpoint; a folder's weight files stream):
// wasm32 memory is 4 GiB.
const MAX_FILE_BYTES = 4 * 2 ** 30;


async function openCache() {
  // The Cache API exists only in secure contexts (https, localhost); elsewhere just download.
  if (!('caches' in self)) return null;
  navigator.storage?.persist?.().catch(() => {});
  for (const old of OLD_CACHES) caches.delete(old).catch(() => {});
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
    store.notes.push(`The browser's download cache failed (${e.message || e}), so this model was loaded without caching: a reload downloads it again.`);
  }
}

/**
 * Which version of a file a response is of: the file's size (from Content-Range, or
 * Content-Length when the whole file came), ETag and Last-Modified.
 */
function versionOf(res) {
  const range = /\/(\d+)$/.exec(res.headers.get('Content-Range') || '');
  const size = range ? +range[1] : res.status === 200 ? +(res.headers.get('Content-Length') || 0) : 0;
  return { size, etag: res.headers.get('ETag'), modified: res.headers.get('Last-Modified') };
}

/** Whether two versions are one file: by ETag, else by Last-Modified, else by size alone. */
function sameVersion(a, b) {
  if (a.size && b.size && a.size !== b.size) return false;
  if (a.etag || b.etag) return a.etag === b.etag;
  if (a.modified || b.modified) return a.modified === b.modified;
  return true;
}

/**
 * Asks the server which version of `url` it has now, with a 1-byte range request (the same kind
 * of request the chunks came from, so the sizes compare): { version }, { missing } on 404, or
 * { failed: why } when the server cannot be reached or refuses.
 */
async function probe(url) {
  try {
    const ctl = new AbortController();
    const res = await fetch(url, { headers: { Range: 'bytes=0-0' }, cache: 'no-store', signal: ctl.signal });
    ctl.abort(); // a server without ranges sends the whole file: not wanted here
    if (res.status === 404) return { missing: true };
    if (!res.ok && res.status !== 416) return { failed: `HTTP ${res.status} ${res.statusText}` };
    return { version: versionOf(res) };
  } catch (e) {
    return { failed: e.message || String(e) };
  }
}

/**
 * Downloads `url` (or reads it from `store.cache`); resolves to its bytes, or null on 404.
 * onBytes(received, total|0) reports progress for this file. With a `sink`, the file is never
 * whole in memory: its chunks go to sink.chunk(bytes) in order as they come (cached ones too),
 * sink.restart() says to forget them (the file changed and starts over), and it resolves to true.
 *
 * The cache holds the file in `chunk`-byte range chunks, so a reload resumes a half-done
 * download, and a record of the file's version (size, ETag, Last-Modified) beside them. Cached
 * chunks are used only while the server still has that version: a complete copy is checked with
 * a 1-byte request, a partial one against the response that continues it, and a changed file is
 * downloaded again from its start, so chunks of two versions never mix. When the server cannot
 * be reached, a complete copy is used as it is (listed in `store.unchecked` for a note). A 404
 * is recorded too, so a file the folder lacks is known to be absent offline.
 */
async function fetchFile(store, url, onBytes, chunk = CHUNK, sink = null) {
  const cache = store.cache;
  const metaKey = `${url}?edict-file`;
  const chunkKey = (i) => `${url}?edict-chunk=${i}`;
  const name = decodeURIComponent(new URL(url).pathname.split('/').slice(-2).join('/'));
  let meta = null; // { version, chunk, count, bytes }: count and bytes once the file is complete
  let chunks = [];
  let received = 0;
  const asked = chunk;
  // one chunk at a time into the file's buffer: Chromium refuses to read one Blob of a few
  // hundred MiB or more (NotReadableError), and downloaded chunks stay bytes, not Blobs, for the
  // same reason (their Blobs outgrow its in-memory blob storage)
  const bytesOf = async (parts) => {
    const out = new Uint8Array(parts.reduce((n, p) => n + (p.size ?? p.length), 0));
    let at = 0;
    for (let i = 0; i < parts.length; i++) {
      const p = parts[i];
      const b = p instanceof Blob ? new Uint8Array(await p.arrayBuffer()) : p;
      out.set(b, at);
      at += b.length;
      parts[i] = null; // collectable as soon as it is copied
    }
    return out;
  };
  // with a sink: the chunks before `sent` went to it, and only their sizes are kept
  let sent = 0;
  const flush = async () => {
    for (; sent < chunks.length; sent++) {
      const p = chunks[sent];
      sink.chunk(p instanceof Blob ? new Uint8Array(await p.arrayBuffer()) : p);
      chunks[sent] = { size: p.size ?? p.length };
    }
  };
  const result = async () => (sink ? (await flush(), true) : bytesOf(chunks));
  /** Forgets the cached file: its record first, so a half-done discard leaves only orphans. */
  const discard = async () => {
    if (sent) sink.restart();
    sent = 0;
    meta = null;
    chunks = [];
    received = 0;
    chunk = asked;
    if (!cache) return;
    await cache.delete(metaKey);
    for (let i = 0; await cache.delete(chunkKey(i)); i++);
  };

  const record = cache && (await cache.match(metaKey));
  if (record) meta = await record.json().catch(() => null);
  if (meta?.missing) {
    // the server had no such file: ask again (offline, it still has none)
    const now = await probe(url);
    if (!now.version) return null;
    await discard();
  } else if (record) {
    for (let i = 0; meta && (meta.count == null || i < meta.count); i++) {
      const r = await cache.match(chunkKey(i));
      if (!r) break;
      const b = await r.blob();
      chunks.push(b);
      received += b.size;
    }
    const complete = meta?.count != null && chunks.length === meta.count && received === meta.bytes;
    // every chunk but a complete file's last one is whole
    const whole = chunks.every((b, i) => b.size === meta?.chunk || (complete && i === chunks.length - 1));
    if (!meta?.version || !whole || (meta.count != null && !complete)) {
      await discard();
    } else if (complete) {
      const now = await probe(url);
      if (now.version && sameVersion(meta.version, now.version)) {
        onBytes(received, received);
        return result();
      }
      if (now.failed) {
        store.unchecked.push({ name, why: now.failed });
        onBytes(received, received);
        return result();
      }
      await discard(); // changed on the server, or gone
      if (now.missing) return null;
    } else {
      chunk = meta.chunk; // resume in the chunks the download began with
    }
  } else if (cache) {
    await discard(); // chunks without a record (an interrupted discard)
  }

  let restarts = 0;
  const restart = async (res) => {
    await res.body?.cancel().catch(() => {});
    await discard();
    if (++restarts > 3) throw new Error(`${url}: the file keeps changing on the server while it downloads; retry later`);
  };
  for (;;) {
    const start = chunks.length * chunk;
    const res = await fetch(url, { headers: { Range: `bytes=${start}-${start + chunk - 1}` }, cache: 'no-store' }).catch((e) => {
      throw new Error(`${url}: the download stopped (${e.message || e})` +
        (start > 0 && store.cache ? `; the ${mib(start)} downloaded are kept, and loading again resumes there` : ''));
    });
    if (res.status === 404) {
      await discard();
      await tryPut(store, metaKey, new Response(JSON.stringify({ missing: true })));
      return null;
    }
    if (res.status === 416) {
      // past the end: the size was a multiple of the chunk, if the server's size is where we are
      const size = versionOf(res).size;
      if (size === start || (start > 0 && !res.headers.get('Content-Range'))) break;
      await restart(res);
      continue;
    }
    if (!res.ok) throw new Error(`${url}: HTTP ${res.status} ${res.statusText}`);
    const version = versionOf(res);
    const ranged = res.status === 206;
    if (meta && (!sameVersion(meta.version, version) || (!ranged && start > 0))) {
      // another version than the chunks so far (or the whole file instead of the next range):
      // drop them and start over
      await restart(res);
      continue;
    }
    if (!meta) {
      meta = { version, chunk, count: null, bytes: null };
      await tryPut(store, metaKey, new Response(JSON.stringify(meta)));
    }
    const total = version.size;
    const bytes = await readWithProgress(res, (n) => onBytes(received + n, total));
    received += bytes.length;
    chunks.push(bytes);
    await tryPut(store, chunkKey(chunks.length - 1), new Response(bytes));
    if (sink) await flush();
    if (!ranged || bytes.length < chunk) break;
  }
  await tryPut(store, metaKey, new Response(JSON.stringify({ ...meta, count: chunks.length, bytes: received })));
  onBytes(received, received);
  return result();
}

/** The body of `res` as bytes, calling onBytes(bytes so far) as they arrive. */
async function readWithProgress(res, onBytes) {
  if (!res.body) return new Uint8Array(await res.arrayBuffer());
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
  const out = new Uint8Array(n);
  n = 0;
  for (const p of parts) {
    out.set(p, n);
    n += p.length;
  }
  return out;
}

/** Lets the status line paint before a step that blocks the tab (building a network). */
const paint = () => new Promise((r) => setTimeout(r, 0));

/**
 * Fetches a diffusers folder at `base` into `builder` (configs, one weight file per network, the
 * first of `candidates(component)` the server has — the CLI's rule, from the wasm module — and
 * the tokenizer and scheduler files when the folder has them). onProgress(text, fraction|null).
 * With `begin`, it is called once the configs and tokenizer are in, before any weights: the
 * builder then builds each network as its file arrives (streaming; one file in memory at a time).
 * Resolves to a note for the user (the cache failed, or a cached file could not be checked with
 * the server), or null. `chunk` sets the cache's chunk size (for tests).
 */
export async function loadFromUrl(builder, base, candidates, onProgress, { chunk = CHUNK, begin = null } = {}) {
  if (!base.endsWith('/')) base += '/';
  const store = { cache: await openCache().catch(() => null), notes: [], unchecked: [] };
  // configs and tokenizer first, so the networks can be built as their weights arrive
  const want = COMPONENTS.map((c) => ({ path: `${c}/config.json`, required: true }));
  for (const path of OPTIONAL) want.push({ path });
  const weightsFrom = want.length;
  const networks = [...COMPONENTS];
  const fetched = new Set();
  for (let n = 0; n < want.length; n++) {
    const w = want[n];
    if (n === weightsFrom && begin) begin();
    let got = null;
    for (const path of w.candidates || [w.path]) {
      const url = new URL(path, new URL(base, location.href)).href;
      // after begin, a network's weights go to the GPU tensor by tensor as they arrive
      const streams = !!(w.network && begin);
      const sink = streams ? { chunk: (b) => builder.addChunk(path, b), restart: () => builder.restartFile(path) } : null;
      const bytes = await fetchFile(store, url, (done, total) =>
        onProgress(`downloading ${path} (file ${n + 1}/${want.length})${streams ? ' onto the GPU' : ''}: ${mib(done)}${total ? ' of ' + mib(total) : ''}`, total ? done / total : null),
      chunk, sink);
      if (bytes) {
        got = path;
        if (streams) {
          onProgress(`building the ${w.network} on the GPU…`, null);
          await paint();
          builder.finishFile(path);
        } else {
          builder.add(path, bytes);
        }
        fetched.add(path);
        break;
      }
    }
    if (!got && w.required) {
      throw new Error(`${base}: not found: ${(w.candidates || [w.path]).join(' or ')} (is this a diffusers model folder?)`);
    }
    if (n === weightsFrom - 1) {
      // the configs are in: the weights of every network the model has
      if (fetched.has(`${SDXL_COMPONENT}/config.json`)) networks.push(SDXL_COMPONENT);
      for (const c of networks) want.push({ candidates: candidates(c), required: true, network: c });
    }
  }
  const u = store.unchecked;
  if (u.length) {
    store.notes.push(`The server could not be reached to check the downloaded files (${u[0].why}), so the copies ` +
      `downloaded before were used: ${u.map((f) => f.name).join(', ')}.`);
  }
  return store.notes.join('\n') || null;
}

/** Deletes every cached model file. */
export async function clearCache() {
  if ('caches' in self) await Promise.all([CACHE, ...OLD_CACHES].map((c) => caches.delete(c)));
}

/**
 * Adds user-picked files: one .safetensors checkpoint, or the files of a diffusers folder (from a
 * webkitdirectory input; only the files the model needs are read, the weights by
 * `candidates(component)` as in loadFromUrl), or a folder of the networks' configs (and
 * tokenizer) with one .safetensors checkpoint at its top. Resolves to null (no note).
 */
export async function loadFromFiles(builder, fileList, candidates, onProgress, begin = null) {
  const files = [...fileList];
  if (files.length === 1 && !files[0].webkitRelativePath) {
    const f = files[0];
    if (!f.name.endsWith('.safetensors')) {
      throw new Error(`${f.name}: pick a .safetensors checkpoint (pickle files such as .ckpt are never loaded)`);
    }
    onProgress(`reading ${f.name}`, null);
    builder.add(f.name, await readWhole(f));
    return null;
  }
  // "folder/unet/config.json" -> "unet/config.json"
  const byPath = new Map(files.map((f) => [f.webkitRelativePath.split('/').slice(1).join('/'), f]));
  const root = files[0]?.webkitRelativePath.split('/')[0] || 'model';
  const networks = byPath.has(`${SDXL_COMPONENT}/config.json`) ? [...COMPONENTS, SDXL_COMPONENT] : COMPONENTS;
  const weights = networks.map((c) => candidates(c).find((p) => byPath.has(p)));
  // a networks' weight missing, but a checkpoint beside the configs (as the CLI's --model FILE
  // --config FOLDER): the checkpoint is read with the folder's configs and tokenizer
  const checkpoints = weights.every(Boolean) ? [] : [...byPath.keys()].filter((p) => !p.includes('/') && p.endsWith('.safetensors'));
  // configs and tokenizer first; a complete folder then streams (begin), one weight file at a time
  const picks = [...COMPONENTS.map((c) => `${c}/config.json`), ...OPTIONAL];
  const streams = !!begin && weights.every(Boolean);
  networks.forEach((c, i) => {
    // no safetensors: hand over the other weight files' names only, for the builder to refuse
    if (!weights[i] && !checkpoints.length) for (const p of byPath.keys()) if (p.startsWith(`${c}/`) && !p.endsWith('.json')) builder.add(p, new Uint8Array());
  });
  const weightsFrom = picks.length;
  picks.push(...checkpoints, ...weights.filter(Boolean));
  for (const [i, p] of picks.entries()) {
    if (i === weightsFrom && streams) begin();
    const f = byPath.get(p);
    if (!f) continue;
    if (i >= weightsFrom && streams) {
      // in chunks, each tensor to the GPU as its bytes are read: never the whole file in memory
      for (let at = 0; at < f.size || at === 0; at += CHUNK) {
        onProgress(`reading ${root}/${p} onto the GPU: ${mib(Math.min(at + CHUNK, f.size))} of ${mib(f.size)}`, i / picks.length);
        await paint();
        builder.addChunk(p, new Uint8Array(await f.slice(at, at + CHUNK).arrayBuffer()));
      }
      builder.finishFile(p);
    } else {
      onProgress(`reading ${root}/${p}`, i / picks.length);
      builder.add(p, await readWhole(f));
    }
  }
  return null;
}

/** A picked file's bytes, refusing one too large for the page to hold before reading it. */
async function readWhole(f) {
  if (f.size > MAX_FILE_BYTES) {
    throw new Error(`${f.name} is ${(f.size / 1e9).toFixed(1)} GB: the page can hold files up to ` +
      `${(MAX_FILE_BYTES / 1e9).toFixed(1)} GB (wasm32 memory); use the CLI for this model`);
  }
  return new Uint8Array(await f.arrayBuffer());
}

function mib(n) {
  return `${(n / (1 << 20)).toFixed(1)} MiB`;
}
