// The demo page (conf/html/index.html) in a real browser: headless Chromium
// driven by playwright-core.
//
//   DEMO_URL=http://127.0.0.1:8080/ node --test browser/demo.test.mjs    # against `make run`
//
// Environment:
//   DEMO_URL         the page (required); its /echo, /proxy, /room and /status endpoints are used
//   DEMO_SCREENSHOT  where to save a PNG of the page at the end (optional)
//   CHROMIUM         the browser binary (default /usr/bin/chromium)
//
// nginx-tests/30-browser.t runs this file against an nginx it starts.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, mkdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { chromium } from 'playwright-core';

const DEMO_URL = process.env.DEMO_URL;
const SCREENSHOT = process.env.DEMO_SCREENSHOT;
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const STEP = 10_000;    // ms: the longest any single wait may take

let context;    // the browser (a persistent context on a fresh profile)
let page;
let profile;    // --user-data-dir
const handshakes = new Map();  // CDP requestId -> { url, request, response }
const problems = [];           // page errors and console errors

// Everything the page has logged: [dir, text] with dir "out", "in" or "sys".
const logLines = () => page.$$eval('#log li',
  (lis) => lis.map((li) => [li.dataset.dir, li.querySelector('.text').textContent]));

const text = (sel) => page.textContent(sel);

const waitState = (state) => page.waitForFunction(
  (s) => document.getElementById('state').dataset.state === s, state, { timeout: STEP });

// Sends one message through the form and waits until the page shows it echoed.
async function sendAndWaitEcho(message) {
  const received = (await logLines()).filter(([d, t]) => d === 'in' && t === message).length;
  await page.fill('#message', message);
  await page.press('#message', 'Enter');
  await page.waitForFunction(([m, n]) =>
    [...document.querySelectorAll('#log li[data-dir="in"] .text')]
      .filter((e) => e.textContent === m).length > n,
  [message, received], { timeout: STEP });
}

// The log lines since the last "open" line: what happened in the current session.
async function sessionLines() {
  const lines = await logLines();
  let i = lines.length - 1;
  while (i >= 0 && !(lines[i][0] === 'sys' && lines[i][1].startsWith('open'))) i--;
  assert.ok(i >= 0, `no "open" line in the log: ${JSON.stringify(lines)}`);
  return lines.slice(i + 1);
}

// The Sec-WebSocket-Extensions header of the handshakes to `path`.
function extensionHeaders(path) {
  const get = (h, name) => {
    const k = Object.keys(h || {}).find((x) => x.toLowerCase() === name);
    return k === undefined ? undefined : h[k];
  };
  return [...handshakes.values()]
    .filter((h) => new URL(h.url).pathname === path && h.response)
    .map((h) => ({
      status: h.response.status,
      offered: get(h.request?.headers, 'sec-websocket-extensions'),
      accepted: get(h.response.headers, 'sec-websocket-extensions'),
    }));
}

before(async () => {
  assert.ok(DEMO_URL, 'set DEMO_URL to the demo page, e.g. http://127.0.0.1:8080/');
  profile = mkdtempSync(join(tmpdir(), 'ws-demo-chromium-'));
  context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    viewport: { width: 760, height: 560 },
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      '--no-proxy-server',
    ],
  });
  page = context.pages()[0] ?? await context.newPage();
  page.setDefaultTimeout(STEP);
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => { if (m.type() === 'error') problems.push(`console: ${m.text()}`); });

  // The handshakes as Chromium sent and received them (headers included).
  const cdp = await context.newCDPSession(page);
  cdp.on('Network.webSocketCreated', (e) => handshakes.set(e.requestId, { url: e.url }));
  cdp.on('Network.webSocketWillSendHandshakeRequest', (e) => {
    (handshakes.get(e.requestId) ?? handshakes.set(e.requestId, {}).get(e.requestId)).request = e.request;
  });
  cdp.on('Network.webSocketHandshakeResponseReceived', (e) => {
    (handshakes.get(e.requestId) ?? handshakes.set(e.requestId, {}).get(e.requestId)).response = e.response;
  });
  await cdp.send('Network.enable');
});

after(async () => {
  await context?.close();
  if (profile) rmSync(profile, { recursive: true, force: true });
});

test('the page loads and connects to /echo', async () => {
  const res = await page.goto(DEMO_URL);
  assert.equal(res.status(), 200);
  assert.equal(await page.title(), 'ngx_http_websocket_module demo');
  assert.equal(await page.isChecked('#endpoint-echo'), true);
  await waitState('open');
  const url = new URL(DEMO_URL);
  assert.equal(await text('#url'), `ws://${url.host}/echo`);
  assert.equal(await page.isEnabled('#disconnect'), true);
  assert.equal(await page.isDisabled('#connect'), true);
});

test('Chromium offers permessage-deflate and the module declines it', async () => {
  // The page shows ws.extensions; data-value is the exact string.
  assert.equal(await page.getAttribute('#extensions', 'data-value'), '');
  assert.equal(await text('#extensions'), 'none');
  assert.equal(await page.evaluate(() => window.demo.socket.extensions), '');
  const hs = extensionHeaders('/echo');
  assert.equal(hs.length, 1, `one handshake to /echo: ${JSON.stringify(hs)}`);
  assert.equal(hs[0].status, 101);
  assert.match(hs[0].offered ?? '', /permessage-deflate/, 'Chromium offered permessage-deflate');
  assert.equal(hs[0].accepted, undefined, 'no Sec-WebSocket-Extensions in the 101');
});

// The live panel polls websocket_status every second.
const liveSessions = (kind) => page.waitForFunction(
  (k) => Number(document.querySelector(`#live-kinds li[data-kind="${k}"]`)?.dataset.value) >= 1,
  kind, { timeout: STEP });

test('the live panel shows the echo session', async () => {
  await liveSessions('echo');
  assert.equal(await text('#live-error'), '');
  assert.match(await page.textContent('#live-kinds'), /echo [1-9]/);
});

test('/echo: two messages are echoed', async () => {
  await sendAndWaitEcho('hello from Chromium');
  await sendAndWaitEcho('second message: héllo ✓ ünïcödé');
  assert.deepEqual(await sessionLines(), [
    ['out', 'hello from Chromium'], ['in', 'hello from Chromium'],
    ['out', 'second message: héllo ✓ ünïcödé'], ['in', 'second message: héllo ✓ ünïcödé'],
  ]);
});

test('the live panel charts those messages per second', async () => {
  await page.waitForFunction(() => Number(document.getElementById('live-chart').dataset.max) > 0,
    null, { timeout: STEP });
  const points = await page.getAttribute('#live-chart polyline', 'points');
  assert.match(points, /^[\d.]+,[\d.]+( [\d.]+,[\d.]+)*$/, `chart points: ${points}`);
  assert.equal(await text('#live-error'), '');
});

test('switching to /proxy closes the echo session with 1000 and connects through websocket_pass', async () => {
  await page.check('#endpoint-proxy');
  await page.waitForFunction(() => document.getElementById('url').textContent.endsWith('/proxy'),
    null, { timeout: STEP });
  await waitState('open');
  const url = new URL(DEMO_URL);
  assert.equal(await text('#url'), `ws://${url.host}/proxy`);
  const lines = await logLines();
  assert.ok(lines.some(([d, t]) => d === 'sys' && t === 'closed: code 1000'),
    `the echo session closed with 1000: ${JSON.stringify(lines)}`);
  assert.equal(await page.evaluate(() => window.demo.socket.url), `ws://${url.host}/proxy`);
  // /proxy has websocket_deflate on: Chromium's offer is accepted.
  const agreed = 'permessage-deflate; client_max_window_bits=15';
  assert.equal(await page.evaluate(() => window.demo.socket.extensions), agreed);
  assert.equal(await page.getAttribute('#extensions', 'data-value'), agreed);
  const hs = extensionHeaders('/proxy');
  assert.equal(hs.length, 1, `one handshake to /proxy: ${JSON.stringify(hs)}`);
  assert.equal(hs[0].status, 101);
  assert.match(hs[0].offered ?? '', /permessage-deflate/);
  assert.equal(hs[0].accepted, agreed, 'the 101 accepts permessage-deflate');
  await liveSessions('pass');
});

// The third message is over websocket_deflate_min_length (64 bytes), so
// the answer comes back compressed too (30-browser.t counts it in the log).
const LONG = 'compressed both ways: ' + 'la '.repeat(60) + 'über ✓';

test('/proxy: three messages are echoed, one long enough to be compressed', async () => {
  await sendAndWaitEcho('through the proxy');
  await sendAndWaitEcho('proxy, again: über ∑ → ok');
  await sendAndWaitEcho(LONG);
  assert.deepEqual(await sessionLines(), [
    ['out', 'through the proxy'], ['in', 'through the proxy'],
    ['out', 'proxy, again: über ∑ → ok'], ['in', 'proxy, again: über ∑ → ok'],
    ['out', LONG], ['in', LONG],
  ]);
});

test('Disconnect: the page shows close code 1000', async () => {
  await page.click('#disconnect');
  await waitState('closed');
  assert.equal(await text('#close-code'), '1000');
  // The echo answers a close with the client's code and no reason; the
  // proxy relays that answer.
  assert.equal(await text('#close-reason'), '(none)');
  assert.equal(await text('#close-clean'), 'clean');
  const lines = await logLines();
  assert.deepEqual(lines.slice(-2), [['sys', 'closing with 1000 "bye"'], ['sys', 'closed: code 1000']]);
  assert.equal(await page.isEnabled('#connect'), true);
  assert.equal(await page.isDisabled('#message'), true);
  if (SCREENSHOT) {
    mkdirSync(dirname(SCREENSHOT), { recursive: true });
    await page.screenshot({ path: SCREENSHOT, fullPage: true });
  }
});

// What Chromium does when a script calls close() without a code: it sends a
// close frame without a status code; the echo answers with 1000, and the
// close event reports the code the server sent.
test('Chromium: close() without a code, on /echo and /proxy', async () => {
  for (const path of ['/echo', '/proxy']) {
    const ev = await page.evaluate((p) => new Promise((resolve, reject) => {
      const ws = new WebSocket(`ws://${location.host}${p}`);
      ws.onopen = () => ws.close();
      ws.onerror = () => reject(new Error('websocket error'));
      ws.onclose = (e) => resolve({ code: e.code, reason: e.reason, wasClean: e.wasClean });
    }), path);
    assert.deepEqual(ev, { code: 1000, reason: '', wasClean: true }, path);
  }
});

// The room (websocket_subscribe, publish on, envelope on, resume from
// last_id): this page and a second tab opened on ?endpoint=room.
const inLines = async (p) => (await p.$$eval('#log li[data-dir="in"] .text', (es) => es.map((e) => e.textContent)));
const waitIn = (p, message) => p.waitForFunction((m) =>
  [...document.querySelectorAll('#log li[data-dir="in"] .text')].some((e) => e.textContent === m),
message, { timeout: STEP });
const waitStateOf = (p, state) => p.waitForFunction(
  (s) => document.getElementById('state').dataset.state === s, state, { timeout: STEP });
let tabB;

test('/room: two tabs chat through one channel, each message once in each tab', async () => {
  await page.check('#endpoint-room');
  await page.click('#connect');
  await waitState('open');
  const url = new URL(DEMO_URL);
  assert.equal(await text('#url'), `ws://${url.host}/room?room=lobby`);
  tabB = await context.newPage();
  tabB.on('pageerror', (e) => problems.push(`tab B page error: ${e.message}`));
  tabB.on('console', (m) => { if (m.type() === 'error') problems.push(`tab B console: ${m.text()}`); });
  await tabB.goto(new URL('?endpoint=room', DEMO_URL).href);
  await waitStateOf(tabB, 'open');
  assert.equal(await tabB.textContent('#url'), `ws://${url.host}/room?room=lobby`);
  // The sender gets its own message too (websocket_channel_publish on).
  await sendAndWaitEcho('hello room');
  await waitIn(tabB, 'hello room');
  await tabB.fill('#message', 'hi from tab B');
  await tabB.press('#message', 'Enter');
  await waitIn(page, 'hi from tab B');
  await waitIn(tabB, 'hi from tab B');
  assert.deepEqual(await inLines(tabB), ['hello room', 'hi from tab B']);
  const id = await page.getAttribute('#last-id', 'data-value');
  assert.match(id, /\S/, 'the envelope carried an id');
  assert.equal(await tabB.getAttribute('#last-id', 'data-value'), id, 'both tabs saw the same last id');
  await liveSessions('subscribe');
});

test('/room: a tab that reconnects gets what it missed, once, from its last id', async () => {
  const before = await tabB.getAttribute('#last-id', 'data-value');
  await tabB.click('#disconnect');
  await waitStateOf(tabB, 'closed');
  await sendAndWaitEcho('while tab B was away');
  await tabB.click('#connect');
  await waitStateOf(tabB, 'open');
  const url = new URL(DEMO_URL);
  assert.equal(await tabB.textContent('#url'),
    `ws://${url.host}/room?room=lobby&last_id=${encodeURIComponent(before)}`);
  await waitIn(tabB, 'while tab B was away');
  // Nothing from before its last id comes again.
  assert.deepEqual(await inLines(tabB), ['hello room', 'hi from tab B', 'while tab B was away']);
  assert.equal(await tabB.getAttribute('#last-id', 'data-value'),
    await page.getAttribute('#last-id', 'data-value'));
  await tabB.close();
});

test('no page errors and no console errors', () => {
  assert.deepEqual(problems, []);
});
