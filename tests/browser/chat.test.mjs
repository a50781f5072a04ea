// herald in a real browser: the chat page served by a real node, in headless Debian Chromium through
// playwright-core. Each scenario of issue 15: both encodings between two pages, a node killed with
// SIGKILL and restarted mid-stream, WebSocket blocked by a proxy (fallback to long-polling, then back
// to WebSocket), long-polling through a proxy that loses answers and cuts polls, and a page from an
// origin that is not allowed. Run: `npm test` here (scripts/test does it), after `cargo build --bin herald`.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  ARTIFACTS, Node, Proxy, browser, openChat, received, nodeClient, publishNumbered,
  assertExactlyOnceInOrder, waitFor, freePort,
} from './harness.mjs';

let chromium;
before(async () => {
  mkdirSync(ARTIFACTS, { recursive: true });
  chromium = await browser();
});
after(async () => { await chromium?.close(); });

for (const encoding of ['json', 'msgpack']) {
  test(`two pages exchange messages (${encoding})`, async () => {
    const node = new Node();
    await node.start();
    const ctx = await chromium.newContext({ viewport: { width: 900, height: 560 } });
    try {
      const channel = `chat:lobby-${encoding}`;
      const q = `channel=${channel}&encoding=${encoding}&msgpack=/vendor/msgpack.min.js`;
      const a = await openChat(ctx, `${node.url}/?name=ada&${q}`);
      const b = await openChat(ctx, `${node.url}/?name=bob&${q}`);
      for (const [page, text] of [[a, 'hello from ada'], [b, 'hi ada, bob here']]) {
        await page.fill('#text', text);
        await page.click('#compose button');
        await waitFor(`"${text}" on both pages`, async () => {
          const [ra, rb] = [await received(a, channel), await received(b, channel)];
          return ra.some((d) => d.text === text) && rb.some((d) => d.text === text);
        });
      }
      for (const page of [a, b]) {
        const texts = (await received(page, channel)).map((d) => `${d.name}: ${d.text}`);
        assert.deepEqual(texts, ['ada: hello from ada', 'bob: hi ada, bob here']);
        assert.equal(await page.textContent('#transport'), 'websocket');
        assert.equal(await page.textContent('#state'), 'connected');
        const shown = await page.$$eval('#messages li .text', (els) => els.map((e) => e.textContent));
        assert.deepEqual(shown, ['hello from ada', 'hi ada, bob here']);
      }
      if (encoding === 'json') {
        await waitFor('both pages in presence', async () => {
          for (const page of [a, b]) await page.evaluate(() => window.chat.refreshPresence());
          return (await a.$$('#presence li')).length === 2 && (await b.$$('#presence li')).length === 2;
        });
        await a.screenshot({ path: path.join(ARTIFACTS, 'chat-tab-1.png') });
        await b.screenshot({ path: path.join(ARTIFACTS, 'chat-tab-2.png') });
      }
    } finally {
      await ctx.close();
      await node.stop();
    }
  });
}

test('the node is killed with SIGKILL and restarted mid-stream: the page resumes, every message once and in order', async () => {
  const node = new Node();
  await node.start();
  const ctx = await chromium.newContext();
  const publisher = await nodeClient(node);
  try {
    const channel = 'chat:crash';
    const page = await openChat(ctx, `${node.url}/?name=watcher&channel=${channel}`);
    const N = 60;
    let killed = false;
    await publishNumbered(publisher, channel, N, 30, async (n) => {
      if (n === 25 && !killed) {
        killed = true;
        await node.kill9();
        await sleep(300);
        await node.start();
      }
    });
    await waitFor('every message on the page', async () => (await received(page, channel)).length >= N, 30000);
    await sleep(300);
    assertExactlyOnceInOrder(assert, await received(page, channel), N, 'after kill -9');
    assert.equal(await page.textContent('#state'), 'connected');
  } finally {
    publisher.close();
    await ctx.close();
    await node.stop();
  }
});

test('WebSocket blocked by a proxy: the page falls back to long-polling, then moves back to WebSocket with no gap or duplicate', async () => {
  const node = new Node();
  const proxy = new Proxy(node);
  await proxy.start();
  node.origins = [proxy.url];
  await node.start();
  proxy.upgrades = false;
  const ctx = await chromium.newContext();
  const publisher = await nodeClient(node);
  try {
    const channel = 'chat:blocked';
    const opened = Date.now();
    const page = await openChat(ctx, `${proxy.url}/?name=walled&channel=${channel}&wsRetryMs=1500`);
    const fellBackMs = Date.now() - opened;
    assert.equal(await page.evaluate(() => window.chat.client.transport), 'polling');
    assert.ok(proxy.counts.refusedUpgrades >= 1, 'the page tried WebSocket first');
    // Documented: a refused upgrade falls back at once; one that hangs, after wsOpenTimeoutMs (5 s).
    assert.ok(fellBackMs < 5000, `fell back in ${fellBackMs} ms`);
    const N = 80;
    await publishNumbered(publisher, channel, N, 40, async (n) => {
      if (n === 30) proxy.upgrades = true;
    });
    await waitFor('the page back on WebSocket', async () => (await page.evaluate(() => window.chat.client.transport)) === 'websocket', 20000);
    await publishNumbered(publisher, `${channel}-after`, 1);
    await waitFor('every message on the page', async () => (await received(page, channel)).length >= N, 20000);
    await sleep(500);
    assertExactlyOnceInOrder(assert, await received(page, channel), N, 'across the fallback and back');
    const transports = await page.evaluate(() => window.chat.transports);
    assert.deepEqual(transports, ['polling', 'websocket']);
    assert.ok(proxy.counts.upgrades >= 1);
  } finally {
    publisher.close();
    await ctx.close();
    await proxy.stop();
    await node.stop();
  }
});

test('lossy long-polling: lost answers and cut polls lose and double nothing, in both directions', async () => {
  const node = new Node();
  const proxy = new Proxy(node);
  await proxy.start();
  node.origins = [proxy.url];
  await node.start();
  let polls = 0;
  let sends = 0;
  proxy.lose = (req) => {
    if (req.url.startsWith('/poll/recv')) {
      polls += 1;
      if (polls % 4 === 0) return 'answer';
      if (polls % 7 === 0) return 'cut';
    }
    if (req.url.startsWith('/poll/send')) {
      sends += 1;
      if (sends % 3 === 0) return 'answer';
    }
    return null;
  };
  const ctx = await chromium.newContext();
  const observer = await nodeClient(node);
  try {
    const channel = 'chat:lossy';
    const seen = [];
    observer.on('message', (m) => { if (m.channel === channel) seen.push(m.data); });
    await observer.subscribe(channel);
    const page = await openChat(ctx, `${proxy.url}/?name=lossy&channel=${channel}&transport=polling`);
    assert.equal(await page.evaluate(() => window.chat.client.transport), 'polling');
    const N = 60;
    // The page publishes through the lossy proxy (its sends lose answers and are sent again) ...
    await page.evaluate(async ({ c, n }) => {
      for (let i = 1; i <= n; i += 1) await window.chat.client.publish(c, { n: i });
    }, { c: channel, n: N });
    // ... and receives through it (its polls lose answers and get cut).
    await waitFor('every message on the page', async () => (await received(page, channel)).length >= N, 30000);
    await waitFor('every message at the observer', () => seen.length >= N);
    await sleep(500);
    assertExactlyOnceInOrder(assert, await received(page, channel), N, 'received by polling');
    assertExactlyOnceInOrder(assert, seen, N, 'published by polling (seen over WebSocket)');
    assert.ok(proxy.counts.lostAnswers >= 5, JSON.stringify(proxy.counts));
    assert.ok(proxy.counts.cuts >= 1, JSON.stringify(proxy.counts));
  } finally {
    observer.close();
    await ctx.close();
    await proxy.stop();
    await node.stop();
  }
});

test('a page from an origin that is not allowed is refused on both transports', async () => {
  const node = new Node();
  await node.start();
  const ctx = await chromium.newContext();
  const cleanup = [];
  try {
    const before = refusedByOrigin(await node.metrics());
    // A page of another origin on this machine (a port the node does not allow), loading the client
    // from the node.
    const evil = http.createServer((req, res) => {
      res.writeHead(200, { 'content-type': 'text/html' });
      res.end('<!doctype html><title>evil</title><p>evil</p>');
    });
    const port = await freePort();
    await new Promise((r) => evil.listen(port, '127.0.0.1', r));
    cleanup.push(() => new Promise((r) => evil.close(r)));
    const page = await ctx.newPage();
    await page.goto(`http://127.0.0.1:${port}/`);
    const outcome = await page.evaluate(async (base) => {
      const ws = await new Promise((resolve) => {
        const s = new WebSocket(`${base.replace('http', 'ws')}/ws`);
        s.onopen = () => resolve('open');
        s.onerror = () => resolve('refused');
      });
      let poll;
      try {
        const r = await fetch(`${base}/poll/open`, { method: 'POST' });
        poll = `status ${r.status}`;
      } catch {
        poll = 'refused';
      }
      const { HeraldClient } = await import(`${base}/client/herald.js`);
      const client = new HeraldClient({
        url: `${base.replace('http', 'ws')}/ws`, wsOpenTimeoutMs: 1000, backoff: { baseMs: 100, maxMs: 200, maxAttempts: 3 },
      });
      const states = [];
      client.on('state', (s) => states.push(`${s.state}/${s.transport}`));
      client.connect().catch(() => {});
      await new Promise((r) => setTimeout(r, 4000));
      client.close();
      return { ws, poll, states };
    }, node.url);
    assert.equal(outcome.ws, 'refused');
    assert.equal(outcome.poll, 'refused');
    assert.ok(!outcome.states.some((s) => s.startsWith('connected')), outcome.states.join(' '));
    const after = refusedByOrigin(await node.metrics());
    // Refused by herald (not by the browser before the request left): the node counted them.
    assert.ok(after - before >= 3, `refused by origin: ${before} -> ${after}`);
  } finally {
    for (const c of cleanup) await c();
    await ctx.close();
    await node.stop();
  }
});

function refusedByOrigin(metrics) {
  const line = metrics.split('\n').find((l) => l.startsWith('herald_connections_refused_total{reason="origin"}'));
  return Number(line?.split(' ')[1] ?? 0);
}
