// Dashboard performance, measured in Debian's Chromium against a real
// `twinhub serve` (release build) with a fleet of 10,100 twins and a
// 7-day 1 Hz series (604,800 points). Prints the figures the dashboard
// issue asks for; asserts nothing (a benchmark, not a test).
//
//   cargo build --release && (cd web && npm ci) && node web/e2e/perf.mjs
//
// TWINHUB_BIN overrides the binary; CHROMIUM the browser.

import { chromium } from 'playwright-core';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, existsSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const here = new URL('.', import.meta.url).pathname;
const BIN = process.env.TWINHUB_BIN ?? join(here, '../../target/release/twinhub');
const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const PW = 'perf-admin-pass-1';
const PLANTS = 100;
const PER_PLANT = 100;
const DAYS = 7;

const dir = mkdtempSync(join(tmpdir(), 'twinhub-perf-'));
const server = spawn(BIN, ['serve', '--data-dir', join(dir, 'data'), '--http-listen', '127.0.0.1:0', '--mqtt-listen', '127.0.0.1:0'], {
  env: { ...process.env, TWINHUB_ADMIN_PASSWORD: PW, TWINHUB_RATE_LIMITS_REQUESTS_PER_SECOND: '0', TWINHUB_LOG_LEVEL: 'warn' },
  stdio: ['ignore', 'ignore', 'inherit'],
});
process.on('exit', () => {
  server.kill('SIGKILL');
  rmSync(dir, { recursive: true, force: true });
});
let base;
for (let i = 0; i < 300 && !base; i++) {
  await new Promise((r) => setTimeout(r, 100));
  const f = join(dir, 'data', 'ports.json');
  if (existsSync(f)) base = 'http://' + JSON.parse(readFileSync(f, 'utf8')).http;
}
if (!base) throw new Error('server did not start');

async function api(method, path, token, body, basic) {
  const headers = {};
  if (token) headers.authorization = `Bearer ${token}`;
  if (basic) headers.authorization = `Basic ${Buffer.from(basic).toString('base64')}`;
  if (body !== undefined) headers['content-type'] = 'application/json';
  const r = await fetch(base + path, { method, headers, body: body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body) });
  if (!r.ok) throw new Error(`${method} ${path}: ${r.status} ${await r.text()}`);
  const t = await r.text();
  return t ? JSON.parse(t) : null;
}
async function pool(n, items, f) {
  let i = 0;
  await Promise.all(Array.from({ length: n }, async () => {
    while (i < items.length) await f(items[i++]);
  }));
}

const token = (await api('POST', '/api/v1/auth/login', null, { username: 'admin', password: PW })).access_token;
await api('POST', '/api/v1/models', token, readFileSync(join(here, '../../ontologies/process-plant.json'), 'utf8'));
let t = Date.now();
const twins = [];
for (let p = 0; p < PLANTS; p++) {
  twins.push([`plant${p}`, { $metadata: { $model: 'dtmi:twinhub:plant:Plant;1' }, name: `Plant ${p}` }]);
  for (let r = 0; r < PER_PLANT; r++)
    twins.push([`plant${p}-r${r}`, { $metadata: { $model: 'dtmi:twinhub:plant:Reactor;1' }, name: `R-${p}-${r}`, status: 'running' }]);
}
await pool(8, twins, ([id, body]) => api('PUT', `/api/v1/twins/${id}`, token, body));
const rels = twins.filter(([id]) => id.includes('-r')).map(([id]) => [id.split('-')[0], id]);
await pool(8, rels, ([p, c]) => api('PUT', `/api/v1/twins/${p}/relationships/contains-${c}`, token, { $relationshipName: 'contains', $targetId: c }));
console.log(`setup: ${twins.length} twins and ${rels.length} relationships in ${((Date.now() - t) / 1000).toFixed(1)} s`);

// A 7-day 1 Hz history on one reactor, sent as a device would.
const dev = await api('POST', '/api/v1/devices', token, { id: 'perf-dev', twin_id: 'plant0-r0' });
const auth = `perf-dev:${dev.key}`;
const end = Math.floor(Date.now() / 1000) * 1000 - 10_000;
const start = end - DAYS * 86400_000;
t = Date.now();
const batches = [];
for (let ts = start; ts < end; ts += 10_000_000) batches.push(ts);
await pool(4, batches, async (b0) => {
  const msgs = [];
  for (let ts = b0; ts < Math.min(b0 + 10_000_000, end); ts += 1000)
    msgs.push({ ts, temperature: Math.round((350 + 10 * Math.sin(ts / 3.6e6) + Math.random()) * 1000) / 1000 });
  await api('POST', '/api/v1/devices/perf-dev/telemetry', null, msgs, auth);
});
console.log(`setup: ${(DAYS * 86400).toLocaleString()} points in ${((Date.now() - t) / 1000).toFixed(1)} s`);

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const page = await (await browser.newContext({ viewport: { width: 1280, height: 900 } })).newPage();
page.setDefaultTimeout(60_000);

// First load: what the login page costs, then sign-in to a drawn fleet.
await page.goto(base + '/');
await page.getByLabel('User name').waitFor();
const load = await page.evaluate(() => {
  const nav = performance.getEntriesByType('navigation')[0];
  const res = performance.getEntriesByType('resource');
  const bytes = [nav, ...res].reduce((n, e) => n + (e.encodedBodySize || 0), 0);
  return { bytes, interactive: Math.round(nav.domInteractive), ready: Math.round(performance.now()) };
});
console.log(`first load: ${(load.bytes / 1024).toFixed(1)} KiB transferred (gzip), DOM interactive ${load.interactive} ms, login form usable ${load.ready} ms after navigation`);
await page.getByLabel('User name').fill('admin');
await page.getByLabel('Password').fill(PW);
t = Date.now();
await page.getByRole('button', { name: 'Sign in' }).click();
await page.locator('[data-twin="plant0"]').waitFor();
console.log(`fleet of ${twins.length.toLocaleString()} twins drawn ${Date.now() - t} ms after sign-in`);

// Smoothness: scroll the 10k-row table for 3 s, one step per frame.
await page.getByRole('button', { name: 'Table', exact: true }).click();
await page.locator('.vlist [data-twin]').first().waitFor();
const scroll = await page.evaluate(
  () =>
    new Promise((done) => {
      const box = document.querySelector('.vlist');
      const frames = [];
      let last = performance.now();
      const t0 = last;
      const step = () => {
        const now = performance.now();
        frames.push(now - last);
        last = now;
        box.scrollTop += 900;
        if (box.scrollTop + box.clientHeight >= box.scrollHeight) box.scrollTop = 0;
        if (now - t0 < 3000) requestAnimationFrame(step);
        else done({ frames: frames.length, max: Math.max(...frames.slice(1)), over50: frames.filter((f) => f > 50).length });
      };
      requestAnimationFrame(step);
    }),
);
console.log(`fleet table scroll (10k rows, 900 px per frame, 3 s): ${scroll.frames} frames, longest ${scroll.max.toFixed(1)} ms, ${scroll.over50} over 50 ms`);

// A 7-day 1 Hz chart from server-side buckets.
await page.goto(base + '/#/twin/plant0-r0');
await page.locator('[data-testid="history-info"]').filter({ hasText: 'buckets' }).waitFor();
const timings = [];
for (let i = 0; i < 3; i++) {
  const before = await page.locator('[data-testid="history-info"]').textContent();
  const t1 = Date.now();
  await page.getByRole('button', { name: i % 2 ? '30d' : '7d', exact: true }).click();
  await page.waitForFunction((b) => document.querySelector('[data-testid="history-info"]')?.textContent !== b && /ms$/.test(document.querySelector('[data-testid="history-info"]')?.textContent ?? ''), before);
  timings.push([Date.now() - t1, await page.locator('[data-testid="history-info"]').textContent()]);
}
for (const [ms, info] of timings) console.log(`history chart: ${info} (click to drawn ${ms} ms)`);

// Six live charts updating once a second: frames and long tasks.
const live = setInterval(() => {
  const v = (x) => Math.round((x + Math.random()) * 1000) / 1000;
  void api('POST', '/api/v1/devices/perf-dev/telemetry', null, { temperature: v(350), pressure: v(5), flow_rate: v(100), yield: v(80), yield_pred: v(80), yield_pred_lower: v(78) }, auth).catch(() => undefined);
}, 1000);
await page.reload();
await page.locator('[data-testid="live-yield_pred_lower"] canvas').waitFor();
const charts = await page.locator('[data-testid^="live-"]').count();
const frames = await page.evaluate(
  () =>
    new Promise((done) => {
      const long = [];
      new PerformanceObserver((l) => l.getEntries().forEach((e) => long.push(e.duration))).observe({ type: 'longtask', buffered: false });
      const frames = [];
      let last = performance.now();
      const t0 = last;
      const step = () => {
        const now = performance.now();
        frames.push(now - last);
        last = now;
        if (now - t0 < 10_000) requestAnimationFrame(step);
        else done({ frames: frames.length, max: Math.max(...frames.slice(1)), over50: frames.filter((f) => f > 50).length, long });
      };
      requestAnimationFrame(step);
    }),
);
clearInterval(live);
console.log(
  `${charts} live charts at 1 Hz for 10 s: ${frames.frames} frames, longest ${frames.max.toFixed(1)} ms, ${frames.over50} over 50 ms, ${frames.long.length} long tasks`,
);
await browser.close();
process.exit(0);
