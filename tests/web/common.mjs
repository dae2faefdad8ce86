// What the browser tests share (run.mjs, the fast one, and full.mjs, the full-size one): the
// test photo, latents files, a static server with HTTP ranges, and headless Chromium.
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import zlib from 'node:zlib';
import { fileURLToPath } from 'node:url';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

/** A smooth size×size test photo (a disc on a gradient), as PNG. */
export function makePng(file, size = 64) {
  const rows = [];
  for (let y = 0; y < size; y++) {
    const row = [0]; // filter: none
    for (let x = 0; x < size; x++) {
      const inDisc = (x - 36) ** 2 + (y - 28) ** 2 < 18 ** 2;
      row.push(inDisc ? 230 : 40 + 3 * x, inDisc ? 150 : 60 + 2 * y, inDisc ? 60 : 200 - 2 * x);
    }
    rows.push(Buffer.from(row));
  }
  const chunk = (type, data) => {
    const body = Buffer.concat([Buffer.from(type), data]);
    const len = Buffer.alloc(4);
    len.writeUInt32BE(data.length);
    const crc = Buffer.alloc(4);
    crc.writeUInt32BE(zlib.crc32(body));
    return Buffer.concat([len, body, crc]);
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(size, 0);
  ihdr.writeUInt32BE(size, 4);
  ihdr.set([8, 2, 0, 0, 0], 8); // 8-bit RGB
  fs.writeFileSync(file, Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', ihdr), chunk('IDAT', zlib.deflateSync(Buffer.concat(rows))), chunk('IEND', Buffer.alloc(0)),
  ]));
}

/** The f64 tensors of a latents file (safetensors), and its metadata as `meta`. */
export function readLatents(file) {
  const b = fs.readFileSync(file);
  const n = Number(b.readBigUInt64LE(0));
  const header = JSON.parse(b.subarray(8, 8 + n).toString());
  const out = { meta: header.__metadata__ || {} };
  for (const [k, v] of Object.entries(header)) {
    if (k === '__metadata__') continue;
    if (v.dtype !== 'F64') throw new Error(`${file}: tensor ${k} is ${v.dtype}, expected F64`);
    const [s, e] = v.data_offsets;
    const raw = b.subarray(8 + n + s, 8 + n + e);
    out[k] = Array.from({ length: raw.length / 8 }, (_, i) => raw.readDoubleLE(i * 8));
  }
  return out;
}

/** ‖a − b‖ / ‖b‖; Infinity when the lengths differ. */
export function relErr(a, b) {
  if (!a || !b || a.length !== b.length) return Infinity;
  let d = 0, n = 0;
  for (let i = 0; i < b.length; i++) {
    d += (a[i] - b[i]) ** 2;
    n += b[i] ** 2;
  }
  return Math.sqrt(d / n);
}

/** Answers GET/HEAD for `size` bytes with HTTP ranges (one range, as a CDN does); read(start, end) gives the body. */
export function sendRanged(req, res, size, headers, read) {
  const m = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range || '');
  if (m && +m[1] >= size) {
    res.writeHead(416, { ...headers, 'Content-Range': `bytes */${size}` }).end();
    return;
  }
  const [start, end] = m ? [+m[1], m[2] ? Math.min(+m[2], size - 1) : size - 1] : [0, size - 1];
  res.writeHead(m ? 206 : 200, {
    ...headers, 'Accept-Ranges': 'bytes', 'Content-Length': Math.max(0, end - start + 1),
    ...(m ? { 'Content-Range': `bytes ${start}-${end}/${size}` } : {}),
  });
  if (req.method === 'HEAD' || end < start) return res.end();
  const body = read(start, end);
  if (Buffer.isBuffer(body)) res.end(body);
  else body.on('error', () => res.destroy()).pipe(res);
}

/**
 * Serves `mounts` ({ '/www/': dir, … }) on 127.0.0.1 with ranges, ETag and Last-Modified as a
 * CDN (Hugging Face's) does; `other(req, res, url)` may answer a request first (true: done).
 */
export function serve(mounts, other = () => false) {
  const types = { '.html': 'text/html', '.js': 'text/javascript', '.css': 'text/css', '.wasm': 'application/wasm', '.json': 'application/json' };
  const server = http.createServer((req, res) => {
    const url = decodeURIComponent(new URL(req.url, 'http://x').pathname);
    if (other(req, res, url)) return;
    const mount = Object.keys(mounts).find((m) => url.startsWith(m));
    const file = mount && path.join(mounts[mount], path.normalize(url.slice(mount.length)));
    if (!file || !file.startsWith(mounts[mount]) || !fs.existsSync(file) || !fs.statSync(file).isFile()) {
      res.writeHead(404).end('not found');
      return;
    }
    const st = fs.statSync(file);
    sendRanged(req, res, st.size, {
      'Content-Type': types[path.extname(file)] || 'application/octet-stream',
      ETag: `"${st.size.toString(16)}-${Math.floor(st.mtimeMs).toString(16)}"`,
      'Last-Modified': st.mtime.toUTCString(),
    }, (start, end) => fs.createReadStream(file, { start, end }));
  });
  return new Promise((resolve, reject) => server.on('error', reject).listen(0, '127.0.0.1', () => resolve(server)));
}

/** Headless Chromium (Debian's, never a download) with a fresh profile under `tmp`; `flags` add to its command line. */
export async function launch(tmp, flags, viewport = { width: 1280, height: 800 }) {
  let chromium;
  try {
    ({ chromium } = await import('playwright-core'));
  } catch {
    throw new Error('playwright-core is missing: run `npm ci` in tests/web (./build.sh test-web does)');
  }
  const ctx = await chromium.launchPersistentContext(fs.mkdtempSync(path.join(tmp, 'profile-')), {
    executablePath: '/usr/bin/chromium',
    headless: true,
    viewport,
    ignoreDefaultArgs: ['--headless'], // we pass --headless=new
    acceptDownloads: true,
    args: ['--headless=new', '--no-sandbox', '--disable-background-networking', '--disable-component-update',
      '--disable-sync', '--no-first-run', '--disable-dev-shm-usage', ...flags],
  }).catch((e) => { throw new Error(`Chromium did not start: ${e.message.split('\n')[0]}`); });
  // A click whose handler starts wasm work on SwiftShader (Edit, Cancel) holds the page's thread
  // until that work first yields; with the native tests running beside (./build.sh test) that
  // took over Playwright's 30 s default, failing a page that works. The waits on states keep
  // their own limits.
  ctx.setDefaultTimeout(180_000);
  return { ctx, page: ctx.pages()[0] || (await ctx.newPage()) };
}

/** Picks `photo` and fills the source prompt, the first target (when given) and the settings. */
export async function fillForm(page, photo, { source, target = null, steps, strength, size }) {
  await page.setInputFiles('#image-input', photo);
  await page.fill('#source', source);
  if (target != null) await page.fill('#targets .target >> nth=0', target);
  await page.click('#settings > summary');
  for (const [id, v] of [['steps', steps], ['strength', strength], ['width', size], ['height', size]]) await page.fill(`#${id}`, `${v}`);
}

/** Waits until the page's `data-state` is one of `states`; resolves to it. */
export const waitState = (page, states, timeout, polling = 250) =>
  page.waitForFunction((s) => s.includes(document.body.dataset.state), states, { timeout, polling })
    .then(() => page.evaluate(() => document.body.dataset.state));
