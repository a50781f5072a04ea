// The browser tests' harness: a real herald node (the debug binary, or $TEST_HERALD_BIN) on fixed ports so it
// can be killed with SIGKILL and started again on the same data, an in-test HTTP proxy that can refuse
// WebSocket upgrades and lose long-polling answers, headless Chromium from Debian through playwright-core,
// and a Node publisher that uses the same JS client (clients/js/herald.js) over the `ws` package.

import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, mkdirSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { chromium } from 'playwright-core';
import WebSocket from 'ws';
import { HeraldClient } from '../../clients/js/herald.js';

const here = path.dirname(fileURLToPath(import.meta.url));
export const ROOT = path.resolve(here, '../..');
export const ARTIFACTS = path.join(process.env.CARGO_TARGET_DIR || path.join(ROOT, 'target'), 'browser');
export const MSGPACK_UMD = path.join(here, 'node_modules/@msgpack/msgpack/dist.umd/msgpack.min.js');

/** A port nobody listens on right now. */
export async function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

export async function waitFor(what, fn, timeoutMs = 20000, everyMs = 50) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(everyMs);
  }
}

/** One herald node: start, kill -9, start again on the same ports and data. */
export class Node {
  constructor({ origins = [] } = {}) {
    this.dir = mkdtempSync(path.join(os.tmpdir(), 'herald-browser-'));
    this.origins = origins;
    this.bin = process.env.TEST_HERALD_BIN || path.join(ROOT, 'target/debug/herald');
    this.log = [];
  }

  get url() { return `http://127.0.0.1:${this.port}`; }
  get wsUrl() { return `ws://127.0.0.1:${this.port}/ws`; }

  async start() {
    this.port ??= await freePort();
    this.adminPort ??= await freePort();
    mkdirSync(path.join(this.dir, 'cwd'), { recursive: true });
    const origins = [this.url, ...this.origins];
    this.child = spawn(this.bin, [
      'serve', '--listen', `127.0.0.1:${this.port}`, '--admin-listen', `127.0.0.1:${this.adminPort}`,
      '--data-dir', path.join(this.dir, 'data'),
    ], {
      cwd: path.join(this.dir, 'cwd'),
      env: {
        // herald reads every HERALD_* variable as configuration (and refuses unknown ones): none of
        // the caller's pass through.
        ...Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('HERALD_'))),
        HERALD_AUTH__ANONYMOUS: 'true',
        HERALD_SERVER__EXAMPLES: 'true',
        HERALD_SERVER__ALLOWED_ORIGINS: JSON.stringify(origins),
        HERALD_SERVER__SHUTDOWN_GRACE_MS: '200',
        HERALD_LIMITS__CONNECTS_PER_SECOND_PER_IP: '10000',
        RUST_LOG: 'warn',
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    for (const s of [this.child.stdout, this.child.stderr]) {
      s.on('data', (d) => { this.log.push(String(d)); if (this.log.length > 200) this.log.shift(); });
    }
    const exited = () => this.child.exitCode !== null;
    await waitFor('the node to be ready', async () => {
      if (exited()) throw new Error(`herald exited (${this.child.exitCode}): ${this.log.join('').slice(-2000)}`);
      return (await status(this.adminPort, '/readyz')) === 200;
    }).catch((e) => {
      throw new Error(`${e.message}; its output: ${this.log.join('').slice(-2000)}`);
    });
  }

  /** SIGKILL, and wait for the process to be gone. */
  async kill9() {
    const c = this.child;
    if (!c || c.exitCode !== null) return;
    const gone = new Promise((r) => c.once('exit', r));
    c.kill('SIGKILL');
    await gone;
  }

  async metrics() {
    return new Promise((resolve, reject) => {
      http.get({ host: '127.0.0.1', port: this.adminPort, path: '/metrics' }, (res) => {
        let body = '';
        res.on('data', (d) => { body += d; });
        res.on('end', () => resolve(body));
      }).on('error', reject);
    });
  }

  async stop() {
    await this.kill9();
    rmSync(this.dir, { recursive: true, force: true });
  }
}

function status(port, p) {
  return new Promise((resolve) => {
    const req = http.get({ host: '127.0.0.1', port, path: p, timeout: 1000 }, (res) => {
      res.resume();
      resolve(res.statusCode);
    });
    req.on('error', () => resolve(0));
    req.on('timeout', () => { req.destroy(); resolve(0); });
  });
}

/**
 * An HTTP proxy in front of a node, for the page to load everything through. `upgrades` says whether a
 * WebSocket upgrade is let through (else it is answered 403, as corporate proxies do); `lose(req)` may
 * say to drop an answer: `'answer'` (forward the request, then cut the client instead of answering),
 * `'cut'` (cut a held request after `cutAfterMs`), or nothing.
 */
export class Proxy {
  constructor(target) {
    this.target = target;
    this.upgrades = true;
    this.lose = () => null;
    this.cutAfterMs = 200;
    this.counts = { requests: 0, lostAnswers: 0, cuts: 0, refusedUpgrades: 0, upgrades: 0 };
    this.sockets = new Set();
    this.server = http.createServer((req, res) => this.forward(req, res));
    this.server.on('upgrade', (req, socket, head) => this.upgrade(req, socket, head));
    this.server.on('connection', (s) => { this.sockets.add(s); s.on('close', () => this.sockets.delete(s)); });
  }

  async start() {
    this.port = await freePort();
    await new Promise((r) => this.server.listen(this.port, '127.0.0.1', r));
    return this;
  }

  get url() { return `http://127.0.0.1:${this.port}`; }

  forward(req, res) {
    this.counts.requests += 1;
    const fate = this.lose(req);
    const headers = { ...req.headers, host: `127.0.0.1:${this.target.port}` };
    const up = http.request({
      host: '127.0.0.1', port: this.target.port, method: req.method, path: req.url, headers,
    }, (ures) => {
      if (fate === 'answer') {
        // The node answered; the answer never reaches the page.
        this.counts.lostAnswers += 1;
        ures.resume();
        ures.on('end', () => req.socket.destroy());
        return;
      }
      res.writeHead(ures.statusCode, ures.headers);
      ures.pipe(res);
    });
    up.on('error', () => req.socket.destroy());
    if (fate === 'cut') {
      setTimeout(() => {
        this.counts.cuts += 1;
        up.destroy();
        req.socket.destroy();
      }, this.cutAfterMs);
    }
    req.pipe(up);
  }

  upgrade(req, socket, head) {
    if (!this.upgrades) {
      this.counts.refusedUpgrades += 1;
      socket.end('HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n');
      return;
    }
    this.counts.upgrades += 1;
    const up = net.connect(this.target.port, '127.0.0.1', () => {
      let head1 = `${req.method} ${req.url} HTTP/1.1\r\n`;
      for (let i = 0; i < req.rawHeaders.length; i += 2) head1 += `${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}\r\n`;
      up.write(`${head1}\r\n`);
      if (head?.length) up.write(head);
      up.pipe(socket);
      socket.pipe(up);
    });
    const end = () => { up.destroy(); socket.destroy(); };
    up.on('error', end);
    socket.on('error', end);
  }

  async stop() {
    for (const s of this.sockets) s.destroy();
    await new Promise((r) => this.server.close(r));
  }
}

/** Headless Debian Chromium. */
export async function browser() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-dev-shm-usage'],
  });
}

/** Opens the chat page at `url` and waits until it is connected and subscribed. */
export async function openChat(context, url) {
  const page = await context.newPage();
  page.on('pageerror', (e) => console.error(`page error: ${e.message}`));
  // Matched on the path only: the page's own URL names this script in its query string.
  const isMsgpack = (url) => url.pathname === '/vendor/msgpack.min.js';
  await page.route(isMsgpack, (route) => route.fulfill({ path: MSGPACK_UMD, contentType: 'text/javascript' }));
  await page.goto(url);
  await page.waitForFunction(() => window.chat?.ready === true, null, { timeout: 20000 });
  return page;
}

/** What the page received on `channel`: the `data` of every message, in order. */
export function received(page, channel) {
  return page.evaluate((c) => (window.chat.received.get(c) || []).map((m) => m.data), channel);
}

/** A Node client using the same JS client over `ws`. */
export async function nodeClient(node, opts = {}) {
  const c = new HeraldClient({ url: node.wsUrl, WebSocket, backoff: { baseMs: 100, maxMs: 1000 }, ...opts });
  await c.connect();
  return c;
}

/** Publishes `{n}` for n = 1..count, one at a time (each awaited: re-sent with its key across crashes). */
export async function publishNumbered(client, channel, count, everyMs = 0, onEach = () => {}) {
  for (let n = 1; n <= count; n += 1) {
    await client.publish(channel, { n });
    await onEach(n);
    if (everyMs) await sleep(everyMs);
  }
}

export function assertExactlyOnceInOrder(assert, data, count, what) {
  const ns = data.map((d) => d.n);
  const expected = Array.from({ length: count }, (_, i) => i + 1);
  assert.deepEqual(ns, expected, `${what}: every message exactly once, in order`);
}
