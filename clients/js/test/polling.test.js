// Long-polling: fallback, ack/seq rules, and the make-before-break move back to a WebSocket.
import { test, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { HeraldClient } from '../herald.js';
import { FakeBroker, waitFor, delay } from './fake-server.js';

// Every client of a test is closed after it, passed or failed, so nothing keeps running.
const clients = [];
afterEach(() => clients.splice(0).forEach((c) => c.close()));

function setup(opts = {}, brokerOpts = {}) {
  const broker = new FakeBroker(brokerOpts);
  const client = new HeraldClient({
    url: 'ws://127.0.0.1:8000/ws',
    WebSocket: broker.WebSocket,
    fetch: broker.fetch,
    backoff: { baseMs: 5, maxMs: 20 },
    wsOpenTimeoutMs: 30,
    wsRetryMs: 60000,
    ...opts,
  });
  clients.push(client);
  const states = [];
  const messages = [];
  client.on('state', (s) => states.push(s));
  client.on('message', (m) => messages.push(m));
  return { broker, client, states, messages };
}

const reqs = (broker, path) => broker.requests.filter((r) => r.path === path);
const pollSession = (broker) => broker.active.find((s) => s.transport === 'polling');

test('falls back to long-polling when the WebSocket is refused, and works there', async () => {
  const { broker, client, states, messages } = setup({ token: 'jwt' });
  broker.wsMode = 'fail';
  await client.connect();
  assert.equal(client.transport, 'polling');
  assert.equal(states.at(-1).transport, 'polling');
  const open = reqs(broker, 'open')[0];
  assert.match(open.url, /^http:\/\/127\.0\.0\.1:8000\/poll\/open\?encoding=json$/);
  assert.equal(open.headers.Authorization, 'Bearer jwt');
  await client.subscribe('c');
  const send = reqs(broker, 'send')[0];
  assert.equal(send.headers['Herald-Session'], pollSession(broker).id);
  assert.equal(send.headers['Content-Type'], 'application/json');
  assert.equal(send.headers.Authorization, 'Bearer jwt');
  broker.publish('c', 'hello');
  await waitFor(() => messages.length === 1);
  assert.equal(messages[0].data, 'hello');
  const ack = await client.publish('c', 'mine');
  assert.equal(ack.offset, 2);
  assert.ok(reqs(broker, 'recv').every((r) => r.headers['Herald-Session'] === pollSession(broker).id));
  client.close();
  await waitFor(() => reqs(broker, 'close').length === 1, 1000, 'POST /poll/close');
});

test('a WebSocket that does not open within wsOpenTimeoutMs counts as blocked', async () => {
  const { broker, client } = setup();
  broker.wsMode = 'hang';
  const t0 = Date.now();
  await client.connect();
  assert.equal(client.transport, 'polling');
  assert.ok(Date.now() - t0 >= 25);
  client.close();
});

test("transports: ['polling'] and blockWebSocket never open a WebSocket", async () => {
  {
    const { broker, client } = setup({ transports: ['polling'] });
    await client.connect();
    assert.equal(client.transport, 'polling');
    assert.equal(broker.wsUrls.length, 0);
    client.close();
  }
  {
    const { broker, client } = setup({ wsRetryMs: 10 });
    client.blockWebSocket = true;
    await client.connect();
    await delay(50);
    assert.equal(client.transport, 'polling');
    assert.equal(broker.wsUrls.length, 0);
    client.close();
  }
});

test('setting blockWebSocket while on a WebSocket moves to polling and resumes', async () => {
  const { broker, client, messages } = setup();
  await client.connect();
  assert.equal(client.transport, 'websocket');
  await client.subscribe('c');
  broker.publish('c', 1);
  await waitFor(() => messages.length === 1);
  client.blockWebSocket = true;
  await waitFor(() => client.transport === 'polling');
  broker.publish('c', 2);
  await waitFor(() => messages.length === 2);
  const subs = broker.frames.filter((f) => f.frame.type === 'subscribe');
  assert.deepEqual(subs.at(-1).frame.since, { epoch: 'E1', offset: 1 });
  assert.equal(subs.at(-1).transport, 'polling');
  assert.deepEqual(messages.map((m) => m.offset), [1, 2]);
  client.close();
});

test('a lost poll answer is asked again with the same ack; empty batches do not move ack', async () => {
  const { broker, client, messages } = setup({ transports: ['polling'] }, { pollWaitMs: 15 });
  await client.connect();
  await client.subscribe('c');
  await delay(60); // idle: held polls end with empty batches
  const before = reqs(broker, 'recv').map((r) => r.ack);
  const ackNow = before.at(-1);
  assert.ok(before.length >= 3);
  assert.ok(before.slice(-3).every((a) => a === ackNow), `empty batches kept ack ${before}`);

  broker.faults.push({ path: 'recv', kind: 'loseBatch' }); // the next batch is lost on the way
  const n = reqs(broker, 'recv').length;
  broker.publish('c', 'x');
  await waitFor(() => messages.length === 1);
  await delay(30);
  const after = reqs(broker, 'recv').slice(n - 1).map((r) => r.ack);
  // The poll whose answer was lost and the one after it carry the same ack; then it moves on.
  const i = after.findIndex((a, k) => k > 0 && a === after[k - 1]);
  assert.ok(i > 0, `same ack polled again: ${after}`);
  assert.ok(after.at(-1) === ackNow + 1, `ack moved once: ${after}`);
  assert.equal(messages.length, 1, 'delivered once');

  broker.faults.push({ path: 'recv', kind: 'fail' }); // a network error without an answer
  broker.publish('c', 'y');
  await waitFor(() => messages.length === 2);
  assert.deepEqual(messages.map((m) => m.data), ['x', 'y']);
  client.close();
});

test('send batches are numbered 1, 2, 3...; a batch re-sent after a network error keeps its seq', async () => {
  const { broker, client } = setup({ transports: ['polling'] });
  await client.connect();
  await client.subscribe('c');
  await client.publish('c', 1);
  await client.publish('c', 2);
  assert.deepEqual(reqs(broker, 'send').map((r) => r.seq), [1, 2, 3]);

  // The server applies the batch but the answer is lost: the client re-sends seq 4, applied once.
  broker.faults.push({ path: 'send', kind: 'lose' });
  const r = await client.publish('c', 3);
  await waitFor(() => reqs(broker, 'send').length === 5);
  assert.deepEqual(reqs(broker, 'send').map((x) => x.seq), [1, 2, 3, 4, 4]);
  assert.equal(reqs(broker, 'send')[3].body, reqs(broker, 'send')[4].body, 'same batch');
  assert.equal(broker.channel('c').log.length, 3);
  assert.equal(r.offset, 3);

  // A network error before the server: same seq again, then the numbering goes on.
  broker.faults.push({ path: 'send', kind: 'fail' });
  await client.publish('c', 4);
  await waitFor(() => reqs(broker, 'send').length === 7);
  await client.publish('c', 5);
  assert.deepEqual(reqs(broker, 'send').map((x) => x.seq), [1, 2, 3, 4, 4, 5, 5, 6]);
  assert.equal(broker.channel('c').log.length, 5);
  client.close();
});

test('frames queued while a send is in flight go in the next batch (at most 64 per batch)', async () => {
  const { broker, client } = setup({ transports: ['polling'] });
  await client.connect();
  const all = Array.from({ length: 100 }, (_, i) => client.publish('c', i));
  await Promise.all(all);
  const sends = reqs(broker, 'send');
  assert.ok(sends.every((s) => JSON.parse(s.body).length <= 64));
  assert.deepEqual(sends.map((s) => s.seq), sends.map((_, i) => i + 1));
  assert.equal(sends.reduce((n, s) => n + JSON.parse(s.body).length, 0), 100);
  assert.equal(broker.channel('c').log.length, 100);
  client.close();
});

test('a polling session gone (404) is reopened and resumed with since', async () => {
  const { broker, client, messages } = setup({ transports: ['polling'] });
  await client.connect();
  await client.subscribe('c');
  broker.publish('c', 1);
  await waitFor(() => messages.length === 1);
  pollSession(broker).kill(); // forgotten by the server: the next poll gets 404
  broker.publish('c', 2);
  await waitFor(() => reqs(broker, 'open').length === 2 && client.state === 'connected');
  await waitFor(() => messages.length === 2);
  const subs = broker.frames.filter((f) => f.frame.type === 'subscribe');
  assert.deepEqual(subs.at(-1).frame.since, { epoch: 'E1', offset: 1 });
  assert.deepEqual(messages.map((m) => m.offset), [1, 2]);
  client.close();
});

test('a disconnect frame over polling acts as a close code (4005: no reconnect)', async () => {
  const { broker, client, states } = setup({ transports: ['polling'] });
  await client.connect();
  pollSession(broker).close(4005, 'forbidden');
  await waitFor(() => client.state === 'closed');
  assert.equal(states.at(-1).code, 4005);
  await delay(20);
  assert.equal(reqs(broker, 'open').length, 1);
});

test('a draining node (503 at open) makes the client try another node', async () => {
  const { broker, client } = setup({ urls: ['ws://a:1/ws', 'ws://b:2/ws'], transports: ['polling'] });
  broker.openStatus = 503;
  const p = client.connect();
  await waitFor(() => reqs(broker, 'open').length >= 1);
  broker.openStatus = null;
  await p;
  const hosts = reqs(broker, 'open').map((r) => new URL(r.url).host);
  assert.notEqual(hosts[0], hosts[1]);
  client.close();
});

test('moves back to WebSocket make-before-break: no gap, no duplicate, pending publish re-sent', async () => {
  const { broker, client, states, messages } = setup({ wsRetryMs: 40 });
  broker.wsMode = 'fail';
  await client.connect();
  assert.equal(client.transport, 'polling');
  await client.subscribe('a');
  await client.subscribe('b');
  // Publish continuously on both channels while the transport changes under the client.
  let n = 0;
  const timer = setInterval(() => {
    n++;
    broker.publish('a', n);
    broker.publish('b', n);
  }, 2);
  await delay(30);
  broker.wsMode = 'ok';
  await waitFor(() => client.transport === 'websocket', 2000, 'the move to WebSocket');
  await delay(30);
  clearInterval(timer);
  await waitFor(() => messages.length === 2 * n, 2000, `all ${2 * n} messages`);
  await delay(20);
  for (const ch of ['a', 'b']) {
    const offsets = messages.filter((m) => m.channel === ch).map((m) => m.offset);
    assert.deepEqual(offsets, Array.from({ length: n }, (_, i) => i + 1), `channel ${ch}: in order, no gap, no dup`);
  }
  await waitFor(() => reqs(broker, 'close').length === 1, 1000, 'POST /poll/close');
  const wsSubs = broker.frames.filter((f) => f.transport === 'websocket' && f.frame.type === 'subscribe');
  assert.equal(wsSubs.length, 2);
  assert.ok(wsSubs.every((f) => f.frame.since && f.frame.since.epoch === 'E1'));
  assert.deepEqual(states.map((s) => [s.state, s.transport]), [
    ['connecting', null],
    ['connected', 'polling'],
    ['connected', 'websocket'],
  ]);
  // After the move, commands go over the WebSocket.
  await client.publish('a', 'after');
  const last = broker.frames.filter((f) => f.frame.type === 'publish').at(-1);
  assert.equal(last.transport, 'websocket');
  client.close();
});

test('a publish unanswered on polling when the move happens is re-sent on the WebSocket with its key', async () => {
  const { broker, client } = setup({ wsRetryMs: 30 });
  broker.wsMode = 'fail';
  await client.connect();
  await client.subscribe('a');
  broker.publish('a', 0);
  await waitFor(() => client.position('a')?.offset === 1);
  // Polling applies the publish but its reply never comes back.
  broker.intercept = (session, frame) => {
    if (session.transport !== 'polling' || frame.type !== 'publish') return false;
    const m = broker.publish(frame.channel, frame.data);
    broker.channel(frame.channel).keys.set(frame.key, { id: m.id, epoch: m.epoch, offset: m.offset });
    return true;
  };
  const p = client.publish('a', 'x');
  await waitFor(() => broker.frames.some((f) => f.frame.type === 'publish'));
  broker.wsMode = 'ok';
  const r = await p;
  assert.equal(client.transport, 'websocket');
  const pubs = broker.frames.filter((f) => f.frame.type === 'publish');
  assert.deepEqual(pubs.map((f) => f.transport), ['polling', 'websocket']);
  assert.equal(pubs[0].frame.key, pubs[1].frame.key);
  assert.equal(broker.channel('a').log.length, 2);
  assert.equal(r.offset, 2);
  client.close();
});
