// Pure helpers: backoff, close-code rules, dedup, endpoints, URLs, keys.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  VERSION, Backoff, Dedup, Endpoints, NO_RECONNECT_CODES, classifyStatus, closeAdvice, newKey,
  pollBaseFromWs, shouldReconnect,
} from '../herald.js';

test('VERSION is 0.1.0', () => assert.equal(VERSION, '0.1.0'));

test('backoff windows double from baseMs and are capped at maxMs', () => {
  const b = new Backoff({ baseMs: 250, maxMs: 15000 });
  assert.equal(b.window(0), 250);
  assert.equal(b.window(1), 500);
  assert.equal(b.window(5), 8000);
  assert.equal(b.window(6), 15000);
  assert.equal(b.window(1000), 15000);
});

test('backoff delays stay within [0, window] (full jitter) and use the whole window', () => {
  const b = new Backoff({ baseMs: 100, maxMs: 3000 });
  for (let f = 0; f < 30; f++) {
    let min = Infinity;
    let max = 0;
    for (let i = 0; i < 200; i++) {
      const d = b.delay();
      assert.ok(d >= 0 && d <= b.window(), `failures ${f}: ${d} > ${b.window()}`);
      assert.ok(d <= 3000);
      min = Math.min(min, d);
      max = Math.max(max, d);
    }
    assert.ok(min < b.window() * 0.2 && max > b.window() * 0.8, 'jitter spreads over the window');
    b.recordFailure();
  }
  // Deterministic bounds with an injected random source.
  assert.equal(new Backoff({ baseMs: 100 }, () => 0).delay(), 0);
  assert.equal(new Backoff({ baseMs: 100 }, () => 1).delay(), 100);
});

test('backoff attempt cap and reset', () => {
  const b = new Backoff({ baseMs: 1, maxMs: 10, maxAttempts: 3 });
  assert.equal(b.exhausted, false);
  assert.equal(b.recordFailure(), true);
  assert.equal(b.recordFailure(), true);
  assert.equal(b.recordFailure(), false);
  assert.equal(b.exhausted, true);
  b.reset();
  assert.equal(b.failures, 0);
  assert.equal(b.recordFailure(), true);
  assert.equal(new Backoff({ maxAttempts: 1 }).recordFailure(), false, 'one attempt means no retry');
  assert.equal(new Backoff().maxAttempts, Infinity);
});

test('close-code rules match the Rust client', () => {
  assert.deepEqual([...NO_RECONNECT_CODES], [1002, 1007, 1008, 1009, 4000, 4004, 4005]);
  for (const c of [1000, 1001, 1006, 1011, 4001, 4002, 4006, 4007]) {
    assert.equal(closeAdvice(c), 'reconnect', String(c));
    assert.equal(shouldReconnect(c), true, String(c));
    assert.equal(closeAdvice(c, true), 'reconnect');
  }
  for (const c of NO_RECONNECT_CODES) {
    assert.equal(closeAdvice(c), 'stop', String(c));
    assert.equal(closeAdvice(c, true), 'stop', 'a "no" code stops whatever the flag says');
    assert.equal(shouldReconnect(c), false);
  }
  assert.equal(closeAdvice(4003), 'reauth');
  assert.equal(closeAdvice(4003, true), 'reauth');
  assert.equal(shouldReconnect(4003), true);
  assert.equal(closeAdvice(1001, false), 'stop', 'disconnect frame with reconnect: false');
  assert.equal(closeAdvice(null), 'reconnect', 'a broken transport reconnects');
});

test('HTTP statuses at open', () => {
  assert.equal(classifyStatus(401), 'unauthorized');
  assert.equal(classifyStatus(403), 'unauthorized');
  assert.equal(classifyStatus(429), 'retry');
  assert.equal(classifyStatus(503), 'retry');
  assert.equal(classifyStatus(400), 'fatal');
  assert.equal(classifyStatus(404), 'fatal');
});

test('long-polling base from a WebSocket URL', () => {
  assert.equal(pollBaseFromWs('ws://127.0.0.1:8000/ws'), 'http://127.0.0.1:8000/poll');
  assert.equal(pollBaseFromWs('wss://example.com/ws'), 'https://example.com/poll');
  assert.equal(pollBaseFromWs('wss://example.com/herald/ws?x=1'), 'https://example.com/herald/poll');
  assert.equal(pollBaseFromWs('ws://h:1/'), 'http://h:1/poll');
  assert.throws(() => pollBaseFromWs('ftp://h/ws'));
});

test('dedup drops repeated ids and old offsets', () => {
  const d = new Dedup();
  assert.equal(d.onSubscribed({ epoch: 'E', offset: 10 }, false), 'fresh');
  assert.equal(d.accept({ id: 'a', epoch: 'E', offset: 10 }), false, 'at head: already seen');
  assert.equal(d.accept({ id: 'b', epoch: 'E', offset: 11 }), true);
  assert.equal(d.accept({ id: 'b', epoch: 'E', offset: 11 }), false);
  assert.equal(d.accept({ id: 'x', epoch: 'E', offset: 11 }), false, 'same offset, other id');
  assert.equal(d.accept({ id: 'y', epoch: 'E', offset: 5 }), false);
  assert.equal(d.accept({ id: 'c', epoch: 'E', offset: 12 }), true);
  assert.deepEqual(d.position, { epoch: 'E', offset: 12 });
});

test('dedup on resume: recovered keeps the position, not_recovered jumps to the head', () => {
  const d = new Dedup();
  d.onSubscribed({ epoch: 'E', offset: 0 }, false);
  for (let i = 1; i <= 5; i++) assert.ok(d.accept({ id: `m${i}`, epoch: 'E', offset: i }));
  assert.equal(d.onSubscribed({ epoch: 'E', offset: 8, recovered: true }, true), 'recovered');
  assert.equal(d.accept({ id: 'm5', epoch: 'E', offset: 5 }), false);
  assert.equal(d.accept({ id: 'm6', epoch: 'E', offset: 6 }), true);
  assert.equal(d.onSubscribed({ epoch: 'F', offset: 3, recovered: false }, true), 'not_recovered');
  assert.deepEqual(d.position, { epoch: 'F', offset: 3 });
  assert.equal(d.accept({ id: 'f3', epoch: 'F', offset: 3 }), false);
  assert.equal(d.accept({ id: 'f4', epoch: 'F', offset: 4 }), true);
  const bounded = new Dedup(null, 2);
  for (const [id, o] of [['a', 1], ['b', 2], ['c', 3]]) bounded.accept({ id, epoch: 'E', offset: o });
  assert.ok(bounded._ids.size <= 2);
  assert.equal(bounded.accept({ id: 'a', epoch: 'E', offset: 1 }), false, 'forgotten id, still refused by offset');
});

test('endpoints: random start, a move always goes to another one', () => {
  const urls = ['ws://a/ws', 'ws://b/ws', 'ws://c/ws'];
  const starts = new Set();
  for (let i = 0; i < 200; i++) {
    const e = new Endpoints(urls);
    starts.add(e.current);
    const before = e.current;
    e.advance();
    assert.notEqual(e.current, before);
  }
  assert.equal(starts.size, 3);
  const one = new Endpoints(['ws://a/ws']);
  one.advance();
  assert.equal(one.current, 'ws://a/ws');
  assert.throws(() => new Endpoints([]));
  assert.throws(() => new Endpoints(['http://a/ws']));
});

test('idempotency keys are unique UUIDs within the 128-byte limit', () => {
  const keys = new Set(Array.from({ length: 1000 }, newKey));
  assert.equal(keys.size, 1000);
  for (const k of keys) {
    assert.match(k, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    assert.ok(k.length <= 128);
  }
});
