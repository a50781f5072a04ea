// The client over the fake WebSocket: states, resume, dedup, close codes, re-auth, publish keys.
import { test, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { HeraldClient } from '../herald.js';
import { FakeBroker, waitFor, delay } from './fake-server.js';

const URL = 'ws://127.0.0.1:8000/ws';

// Every client of a test is closed after it, passed or failed, so nothing keeps running.
const clients = [];
afterEach(() => clients.splice(0).forEach((c) => c.close()));

function setup(opts = {}, brokerOpts = {}) {
  const broker = new FakeBroker(brokerOpts);
  const client = new HeraldClient({
    url: URL,
    WebSocket: broker.WebSocket,
    fetch: broker.fetch,
    backoff: { baseMs: 5, maxMs: 20 },
    wsOpenTimeoutMs: 50,
    ...opts,
  });
  clients.push(client);
  const states = [];
  const messages = [];
  const errors = [];
  client.on('state', (s) => states.push(s));
  client.on('message', (m) => messages.push(m));
  client.on('error', (e) => errors.push(e));
  return { broker, client, states, messages, errors };
}

const wsSession = (broker) => broker.active.find((s) => s.transport === 'websocket');

test('connects over WebSocket; state events: connecting, connected, reconnecting, connected, closed', async () => {
  const { broker, client, states } = setup();
  assert.equal(client.state, 'closed');
  await client.connect();
  assert.equal(client.state, 'connected');
  assert.equal(client.transport, 'websocket');
  wsSession(broker).close(1001, 'going away');
  await waitFor(() => states.filter((s) => s.state === 'connected').length === 2, 2000, 'reconnect');
  client.close();
  assert.deepEqual(states.map((s) => s.state), ['connecting', 'connected', 'reconnecting', 'connected', 'closed']);
  assert.equal(states[1].transport, 'websocket');
  assert.equal(states[1].url, URL);
  assert.equal(states[2].code, 1001);
  assert.equal(states[2].transport, null);
  assert.equal(client.state, 'closed');
  assert.equal(client.transport, null);
  assert.equal(broker.wsUrls.length, 2);
  await assert.rejects(client.publish('a', 1), /closed/);
});

test('resume after a drop uses since; replayed offsets are not delivered twice', async () => {
  const { broker, client, messages, states } = setup({ backoff: { baseMs: 40, maxMs: 40 } });
  await client.connect();
  const perSub = [];
  const reply = await client.subscribe('chat:a', { onMessage: (m) => perSub.push(m.offset) });
  assert.deepEqual(reply, { channel: 'chat:a', epoch: 'E1', offset: 0 });
  for (let i = 1; i <= 3; i++) broker.publish('chat:a', { n: i });
  await waitFor(() => messages.length === 3);
  assert.deepEqual(client.position('chat:a'), { epoch: 'E1', offset: 3 });

  broker.replayOverlap = 2; // the server replays 2..5: 2 and 3 were delivered already
  wsSession(broker).kill();
  await waitFor(() => states.some((s) => s.state === 'reconnecting'));
  broker.publish('chat:a', { n: 4 }); // published while the client is away
  broker.publish('chat:a', { n: 5 });
  await waitFor(() => messages.length >= 5);
  broker.publish('chat:a', { n: 6 });
  await waitFor(() => messages.length >= 6);
  await delay(20);
  const subs = broker.frames.filter((f) => f.frame.type === 'subscribe').map((f) => f.frame);
  assert.equal(subs.length, 2);
  assert.equal(subs[0].since, undefined);
  assert.deepEqual(subs[1].since, { epoch: 'E1', offset: 3 });
  assert.deepEqual(messages.map((m) => m.offset), [1, 2, 3, 4, 5, 6]);
  assert.deepEqual(perSub, [1, 2, 3, 4, 5, 6]);
  assert.deepEqual(messages[3].data, { n: 4 });
  assert.equal(messages[0].channel, 'chat:a');
  assert.equal(messages[0].type, undefined, 'envelope stripped');
  client.close();
});

test('not_recovered is surfaced when the history behind the position is gone', async () => {
  const { broker, client, messages } = setup();
  const lost = [];
  client.on('not_recovered', (e) => lost.push(e));
  await client.connect();
  await client.subscribe('c');
  broker.publish('c', 1);
  await waitFor(() => messages.length === 1);
  wsSession(broker).close(1011, 'internal');
  broker.resetEpoch('c', 'E2');
  broker.publish('c', 'new');
  await waitFor(() => lost.length === 1);
  assert.deepEqual(lost[0], { channel: 'c', epoch: 'E2', offset: 1 });
  assert.deepEqual(client.position('c'), { epoch: 'E2', offset: 1 });
  broker.publish('c', 'live');
  await waitFor(() => messages.length === 2);
  assert.deepEqual(messages.map((m) => [m.epoch, m.offset]), [['E1', 1], ['E2', 2]]);
  client.close();
});

test('no reconnect after a "no" close code (4004, 1008): closed and an error event', async () => {
  for (const code of [4004, 1008]) {
    const { broker, client, states, errors } = setup();
    await client.connect();
    broker.intercept = () => true; // not answered
    const pending = assert.rejects(client.publish('x', 1), (e) => e.code === 'gave_up');
    wsSession(broker).close(code, 'bye');
    await waitFor(() => client.state === 'closed');
    await pending;
    await delay(30);
    assert.equal(broker.wsUrls.length, 1, 'no new connection');
    assert.equal(states.at(-1).state, 'closed');
    assert.equal(states.at(-1).code, code);
    assert.equal(errors.length, 1);
  }
});

test('4003: the token callback is asked again and the new token is used', async () => {
  const tokens = ['t1', 't2'];
  let calls = 0;
  const { broker, client } = setup({ getToken: async () => tokens[Math.min(calls++, 1)] });
  await client.connect();
  assert.equal(new globalThis.URL(broker.wsUrls[0]).searchParams.get('token'), 't1');
  await client.subscribe('c');
  wsSession(broker).close(4003, 'token expired');
  await waitFor(() => broker.wsUrls.length === 2 && client.state === 'connected');
  assert.equal(new globalThis.URL(broker.wsUrls[1]).searchParams.get('token'), 't2');
  assert.equal(wsSession(broker).token, 't2');
  assert.ok(calls >= 2);
  client.close();
});

test('HTTP 401 at open with no new token: gives up; with a new token: retries with it', async () => {
  {
    const { broker, client, errors } = setup({ token: 'bad' });
    broker.wsMode = 'fail'; // a browser sees a refused upgrade as a socket that never opened...
    broker.openStatus = 401; // ...and long-polling then sees the 401
    await assert.rejects(client.connect(), (e) => e.code === 'gave_up');
    assert.equal(client.state, 'closed');
    assert.match(errors[0].reason, /no new token/);
  }
  {
    let n = 0;
    const { broker, client } = setup({ getToken: async () => `tok${++n}` });
    broker.wsMode = 'fail';
    broker.openStatus = 401;
    const connected = client.connect();
    await waitFor(() => broker.requests.filter((r) => r.path === 'open').length === 1);
    broker.openStatus = null;
    await connected;
    const opens = broker.requests.filter((r) => r.path === 'open');
    assert.equal(opens.at(-1).headers.Authorization, 'Bearer tok2');
    client.close();
  }
});

test('a publish unanswered when the connection dropped is re-sent with the same key and stored once', async () => {
  const { broker, client } = setup();
  await client.connect();
  // The server applies the first publish but its reply is lost with the connection.
  let first = true;
  broker.intercept = (session, frame) => {
    if (frame.type !== 'publish' || !first) return false;
    first = false;
    broker.intercept = null;
    broker.channel(frame.channel); // apply it without answering
    const m = broker.publish(frame.channel, frame.data);
    broker.channel(frame.channel).keys.set(frame.key, { id: m.id, epoch: m.epoch, offset: m.offset });
    session.close(1001, 'going away');
    return true;
  };
  let answers = 0;
  const ack = await client.publish('chat:a', { text: 'hi' }).then((r) => (answers++, r));
  const pubs = broker.frames.filter((f) => f.frame.type === 'publish').map((f) => f.frame);
  assert.equal(pubs.length, 2);
  assert.equal(pubs[0].key, pubs[1].key, 'same idempotency key');
  assert.notEqual(pubs[0].key, undefined);
  assert.equal(broker.channel('chat:a').log.length, 1, 'stored once');
  assert.deepEqual({ epoch: ack.epoch, offset: ack.offset }, { epoch: 'E1', offset: 1 });
  await delay(20);
  assert.equal(answers, 1);
  // A second publish gets a new key.
  await client.publish('chat:a', { text: 'again' });
  const keys = broker.frames.filter((f) => f.frame.type === 'publish').map((f) => f.frame.key);
  assert.equal(new Set(keys).size, 2);
  client.close();
});

test('commands: request errors reject with the error frame; presence, history, unsubscribe', async () => {
  const { broker, client } = setup();
  await client.connect();
  await assert.rejects(client.request({ type: 'nope' }), (e) => e.code === 'unknown_type');
  await client.subscribe('p');
  await assert.rejects(client.subscribe('p'), (e) => e.code === 'already_subscribed');
  const pres = await client.presence('p');
  assert.equal(pres.members.length, 1);
  await client.publish('p', 'x');
  const h = await client.history('p', { since: 0 });
  assert.equal(h.messages.length, 1);
  assert.deepEqual(await client.unsubscribe('p'), {});
  assert.equal(client.position('p'), null);
  assert.equal(wsSession(broker).subs.size, 0);
  client.close();
});

test('the attempt cap makes the client give up', async () => {
  const { broker, client, states } = setup({ backoff: { baseMs: 1, maxMs: 2, maxAttempts: 3 }, transports: ['websocket'] });
  broker.wsMode = 'fail';
  await assert.rejects(client.connect(), (e) => e.code === 'gave_up');
  assert.equal(broker.wsUrls.length, 3);
  assert.deepEqual(states.map((s) => s.state), ['connecting', 'connecting', 'connecting', 'closed']);
  assert.equal(broker.requests.length, 0, "transports: ['websocket'] never polls");
});

test('several endpoints: after a loss the next attempt goes to another one', async () => {
  const urls = ['ws://a:1/ws', 'ws://b:2/ws', 'ws://c:3/ws'];
  const { broker, client } = setup({ urls, url: undefined });
  await client.connect();
  for (let i = 0; i < 5; i++) {
    wsSession(broker).close(1001, 'draining');
    await waitFor(() => broker.wsUrls.length === i + 2 && client.state === 'connected');
    const [a, b] = broker.wsUrls.slice(-2).map((u) => new globalThis.URL(u).host);
    assert.notEqual(a, b);
  }
  client.close();
});
