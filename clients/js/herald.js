// herald-client: the JavaScript client of the herald message broker (docs/protocol.md, version 1).
//
// One self-contained ES module without imports: the herald node serves this very file at
// `/client/herald.js`, so a page can `import { HeraldClient } from '/client/herald.js'`.
//
// What it promises the application, like the Rust client (client/src): every message of a
// subscribed channel once and in order, across dropped connections. It reconnects with full-jitter
// exponential backoff, resubscribes with the last delivered `{epoch, offset}` (`since`), drops
// replayed duplicates, re-sends unanswered publishes with the same idempotency `key`, and says so
// (`not_recovered`) when the server could not recover a gap. When a WebSocket cannot be opened (a
// proxy refusing `Upgrade`), it runs the same session over HTTP long-polling and moves back to a
// WebSocket, make-before-break, when one opens again.

export const VERSION = '0.1.0';

const SUBPROTOCOL = { json: 'herald.v1.json', msgpack: 'herald.v1.msgpack' };
const MAX_SEND_BATCH = 64; // frames per POST /poll/send (protocol limit)

// ---------------------------------------------------------------------------------------------
// Small pure helpers (exported for tests)
// ---------------------------------------------------------------------------------------------

/** Close codes after which a client must not reconnect without a change (same list as Rust). */
export const NO_RECONNECT_CODES = Object.freeze([1002, 1007, 1008, 1009, 4000, 4004, 4005]);

/**
 * The reconnect rule of docs/protocol.md: "no" codes always stop, 4003 re-authenticates, a
 * `disconnect` frame with `reconnect: false` stops, anything else (also a broken transport
 * without a code) reconnects. Returns 'reconnect' | 'reauth' | 'stop'.
 */
export function closeAdvice(code, reconnectFlag) {
  if (code != null && NO_RECONNECT_CODES.includes(code)) return 'stop';
  if (code === 4003) return 'reauth';
  if (reconnectFlag === false) return 'stop';
  return 'reconnect';
}

/** Whether a close with `code` (and the `reconnect` advice of a `disconnect` frame) allows reconnecting. */
export function shouldReconnect(code, reconnectFlag) {
  return closeAdvice(code, reconnectFlag) !== 'stop';
}

/** What to do when an open was answered with an HTTP status: 'unauthorized' | 'retry' | 'fatal'. */
export function classifyStatus(status) {
  if (status === 401 || status === 403) return 'unauthorized';
  if (status === 429 || (status >= 500 && status <= 599)) return 'retry';
  return 'fatal';
}

/**
 * The long-polling base URL of a WebSocket endpoint: ws→http, wss→https, a last path segment
 * `ws` becomes `poll` (anything else gets `/poll` appended); query and fragment are dropped.
 */
export function pollBaseFromWs(url) {
  const u = new URL(url);
  if (u.protocol === 'ws:') u.protocol = 'http:';
  else if (u.protocol === 'wss:') u.protocol = 'https:';
  else if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new Error(`not a ws:// or wss:// url: ${url}`);
  u.pathname = /\/ws\/?$/.test(u.pathname)
    ? u.pathname.replace(/\/ws\/?$/, '/poll')
    : u.pathname.replace(/\/?$/, '/poll');
  u.search = '';
  u.hash = '';
  return u.toString();
}

/**
 * Reconnect delays: exponential backoff with full jitter. The delay before the next attempt is
 * uniform in [0, min(maxMs, baseMs * 2^failures)], so a fleet dropped by the same restart spreads
 * its reconnects over the window instead of stampeding. `maxAttempts` failed attempts in a row
 * make the client give up.
 */
export class Backoff {
  constructor({ baseMs = 250, maxMs = 15000, maxAttempts = Infinity } = {}, random = Math.random) {
    this.baseMs = baseMs;
    this.maxMs = maxMs;
    this.maxAttempts = maxAttempts;
    this.failures = 0;
    this._random = random;
  }

  /** The upper bound of the delay after `failures` failed attempts. */
  window(failures = this.failures) {
    return Math.min(this.maxMs, this.baseMs * 2 ** Math.min(failures, 52));
  }

  /** A delay drawn uniformly from [0, window()]. */
  delay() {
    return this._random() * this.window();
  }

  get exhausted() {
    return this.failures >= this.maxAttempts;
  }

  /** Records a failed attempt; false when the attempt limit is reached (give up). */
  recordFailure() {
    this.failures += 1;
    return !this.exhausted;
  }

  reset() {
    this.failures = 0;
  }
}

/**
 * Resume position and duplicate suppression of one channel. It remembers the last delivered
 * `{epoch, offset}` (the `since` of the next resubscribe) and refuses a message whose id was
 * already delivered or whose offset is not past the last one of the same epoch.
 */
export class Dedup {
  constructor(since = null, idMemory = 4096) {
    this.last = since ? { epoch: since.epoch, offset: since.offset } : null;
    this._ids = new Set();
    this._idMemory = Math.max(1, idMemory);
  }

  get position() {
    return this.last ? { ...this.last } : null;
  }

  /**
   * Applies a subscribe reply; `resumed` says whether the subscribe carried `since`.
   * Returns 'fresh' | 'recovered' | 'not_recovered'.
   */
  onSubscribed(reply, resumed) {
    const head = { epoch: reply.epoch, offset: reply.offset };
    if (!resumed || !this.last) {
      this.last = head;
      return 'fresh';
    }
    if (reply.recovered === true) return 'recovered';
    this.last = head; // live delivery starts after the head: nothing before it will come
    return 'not_recovered';
  }

  /** Whether `msg` must be delivered; when it is, records it as the last position. */
  accept(msg) {
    if (msg.id != null && this._ids.has(msg.id)) return false;
    if (this.last && this.last.epoch === msg.epoch && msg.offset <= this.last.offset) return false;
    this.last = { epoch: msg.epoch, offset: msg.offset };
    if (msg.id != null) {
      this._ids.add(msg.id);
      // A Set iterates in insertion order: the first entry is the oldest id.
      if (this._ids.size > this._idMemory) this._ids.delete(this._ids.values().next().value);
    }
    return true;
  }
}

/**
 * The endpoint list: the first attempt goes to a random endpoint, every attempt after a failure
 * or a lost connection to a random *other* one, so the clients of a draining node spread evenly
 * over the remaining nodes.
 */
export class Endpoints {
  constructor(urls, random = Math.random) {
    if (!urls || urls.length === 0) throw new Error('herald: no server url given');
    for (const u of urls) {
      if (!/^wss?:\/\/[^/]/.test(u)) throw new Error(`herald: not a ws:// or wss:// url: ${u}`);
    }
    this.urls = [...urls];
    this._random = random;
    this.index = Math.floor(random() * urls.length);
  }

  get current() {
    return this.urls[this.index];
  }

  advance() {
    const n = this.urls.length;
    if (n > 1) this.index = (this.index + 1 + Math.floor(this._random() * (n - 1))) % n;
  }
}

/** A fresh idempotency key (protocol: a string up to 128 bytes; a UUID is 36). */
export function newKey() {
  const c = globalThis.crypto;
  if (c && typeof c.randomUUID === 'function') return c.randomUUID();
  // randomUUID exists only in secure contexts; getRandomValues exists everywhere.
  const b = new Uint8Array(16);
  if (c && typeof c.getRandomValues === 'function') c.getRandomValues(b);
  else for (let i = 0; i < 16; i++) b[i] = Math.floor(Math.random() * 256);
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = [...b].map((x) => x.toString(16).padStart(2, '0')).join('');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/** The error a command is rejected with: the server's `error` frame, or a client-side reason. */
export class HeraldError extends Error {
  constructor(code, message, extra = {}) {
    super(message || code);
    this.name = 'HeraldError';
    this.code = code;
    Object.assign(this, extra);
  }
}

// ---------------------------------------------------------------------------------------------
// Encodings
// ---------------------------------------------------------------------------------------------

/** Frame and batch (de)serialisation for one encoding. */
function makeCodec(encoding, msgpack) {
  if (encoding === 'msgpack') {
    if (!msgpack || typeof msgpack.encode !== 'function' || typeof msgpack.decode !== 'function') {
      throw new Error("herald: encoding 'msgpack' needs options.msgpack = { encode, decode } (@msgpack/msgpack)");
    }
    return {
      name: 'msgpack',
      contentType: 'application/msgpack',
      encodeFrame: (f) => msgpack.encode(f),
      decodeFrame: (d) => msgpack.decode(toBytes(d)),
      // A client batch is an array of `bin`s, one encoded frame each.
      encodeBatch: (frames) => msgpack.encode(frames.map((f) => msgpack.encode(f))),
      decodeBatch: (body) => {
        const b = msgpack.decode(toBytes(body));
        return { ...b, frames: (b.frames || []).map((x) => msgpack.decode(toBytes(x))) };
      },
    };
  }
  if (encoding !== 'json') throw new Error(`herald: unknown encoding ${encoding}`);
  return {
    name: 'json',
    contentType: 'application/json',
    encodeFrame: (f) => JSON.stringify(f),
    decodeFrame: (d) => JSON.parse(typeof d === 'string' ? d : new TextDecoder().decode(toBytes(d))),
    encodeBatch: (frames) => JSON.stringify(frames),
    decodeBatch: (body) => JSON.parse(typeof body === 'string' ? body : new TextDecoder().decode(toBytes(body))),
  };
}

function toBytes(d) {
  if (d instanceof Uint8Array) return d;
  if (d instanceof ArrayBuffer) return new Uint8Array(d);
  if (ArrayBuffer.isView(d)) return new Uint8Array(d.buffer, d.byteOffset, d.byteLength);
  throw new Error('herald: binary data expected');
}

// ---------------------------------------------------------------------------------------------
// Timers
// ---------------------------------------------------------------------------------------------

function sleep(ms, signal) {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const t = setTimeout(done, ms);
    function done() {
      clearTimeout(t);
      signal?.removeEventListener?.('abort', done);
      resolve();
    }
    signal?.addEventListener?.('abort', done);
  });
}

/** Retry delay of a poll or send after a network error: short, growing, capped at 2 s. */
function pollRetryDelay(failures) {
  return Math.min(2000, 50 * 2 ** Math.min(failures, 6)) * (0.5 + Math.random() / 2);
}

// ---------------------------------------------------------------------------------------------
// Links: one open session over one transport
// ---------------------------------------------------------------------------------------------
//
// A link is opened by `open()` (resolves at `welcome`, or rejects with an OpenError), then
// `attach(onFrame, onEnd)` hands it to the client: frames received after the welcome are buffered
// until then. `onEnd({code, reason, reconnect, auth})` is called once when the session is lost;
// `close()` ends it on purpose (and does not call onEnd).

/** Why an open failed: kind 'blocked' (transport unusable), 'retry', 'unauthorized' or 'fatal'. */
function openError(kind, reason, extra = {}) {
  return Object.assign(new HeraldError(kind, reason), { kind, reason, ...extra });
}

/** Judges a `disconnect` frame received before the welcome. */
function openErrorFromDisconnect(f) {
  const advice = closeAdvice(f.code, f.reconnect);
  const kind = advice === 'stop' ? 'fatal' : advice === 'reauth' ? 'unauthorized' : 'retry';
  return openError(kind, `closed with ${f.code}: ${f.reason ?? ''}`, { status: f.code, retryAfterMs: f.retry_after_ms });
}

class BaseLink {
  constructor(url) {
    this.url = url;
    this.welcome = null;
    this.ended = false;
    this._onFrame = null;
    this._onEnd = null;
    this._early = []; // frames after the welcome, before attach()
    this._endInfo = null; // how it ended, for an end that came before attach()
  }

  attach(onFrame, onEnd) {
    this._onFrame = onFrame;
    this._onEnd = onEnd;
    const early = this._early;
    this._early = [];
    for (const f of early) if (this._onFrame === onFrame) onFrame(f);
    // Lost between the welcome and attach(): report it now.
    if (this._endInfo && this._onEnd === onEnd) {
      this.detach();
      onEnd(this._endInfo);
    }
  }

  /** Stops reporting frames and the end (the client has moved on from this link). */
  detach() {
    this._onFrame = null;
    this._onEnd = null;
  }

  _frame(f) {
    if (this._endInfo) return;
    if (this._onFrame) this._onFrame(f);
    else this._early.push(f);
  }

  _end(info) {
    if (this.ended) return;
    this.ended = true;
    this._endInfo = info;
    this._cleanup();
    const cb = this._onEnd;
    this.detach();
    cb?.(info);
  }

  _cleanup() {}
}

/** A WebSocket session. The token travels as the `token` query parameter (browsers cannot set headers). */
class WsLink extends BaseLink {
  constructor(url, { WebSocket, codec, token, openTimeoutMs, welcomeTimeoutMs }) {
    super(url);
    this.transport = 'websocket';
    this._WebSocket = WebSocket;
    this._codec = codec;
    this._token = token;
    this._openTimeoutMs = openTimeoutMs;
    this._welcomeTimeoutMs = welcomeTimeoutMs;
    this._hb = null;
    this._hbSeq = 0;
  }

  open() {
    return new Promise((resolve, reject) => {
      const u = new URL(this.url);
      if (this._token) u.searchParams.set('token', this._token);
      let ws;
      try {
        ws = new this._WebSocket(u.toString(), [SUBPROTOCOL[this._codec.name]]);
      } catch (e) {
        return reject(openError('blocked', `WebSocket: ${e?.message ?? e}`));
      }
      this.ws = ws;
      ws.binaryType = 'arraybuffer';
      let opened = false;
      let settled = false;
      let disconnect = null;
      const fail = (err) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        this.ended = true;
        this._detachSocket();
        try { ws.close(); } catch { /* already closing */ }
        reject(err);
      };
      // Before `open`: a socket that does not open in time counts as blocked (a proxy eating the
      // Upgrade); after it: the welcome must follow within the connect timeout.
      let timer = setTimeout(
        () => fail(openError('blocked', `WebSocket did not open within ${this._openTimeoutMs} ms`)),
        this._openTimeoutMs,
      );
      ws.onopen = () => {
        opened = true;
        clearTimeout(timer);
        timer = setTimeout(
          () => fail(openError('retry', `no welcome within ${this._welcomeTimeoutMs} ms`)),
          this._welcomeTimeoutMs,
        );
      };
      ws.onerror = () => {}; // the close event that follows says what happened
      ws.onclose = (ev) => {
        if (!settled) {
          if (disconnect) return fail(openErrorFromDisconnect(disconnect));
          // A browser cannot see the HTTP answer of a refused upgrade (401, 503...): a socket that
          // never opened is reported as blocked, and long-polling then sees the real status.
          return fail(openError(opened ? 'retry' : 'blocked', `WebSocket closed (${ev?.code ?? 'no code'}) before welcome`));
        }
        this._end({ code: disconnect?.code ?? ev?.code ?? null, reason: disconnect?.reason ?? ev?.reason ?? 'connection closed', reconnect: disconnect?.reconnect });
      };
      ws.onmessage = (ev) => {
        let f;
        try {
          f = this._codec.decodeFrame(ev.data);
        } catch {
          return; // an undecodable frame is ignored, as in the Rust client
        }
        this._lastRx = Date.now();
        if (f.type === 'disconnect') disconnect = f;
        if (!settled) {
          if (f.type === 'welcome') {
            settled = true;
            clearTimeout(timer);
            this.welcome = f;
            this._startHeartbeat(f.heartbeat_ms);
            resolve(this);
          }
          return;
        }
        this._frame(f);
      };
    });
  }

  send(frame) {
    if (this.ended) return;
    try {
      this.ws.send(this._codec.encodeFrame(frame));
    } catch (e) {
      this._lost(`send failed: ${e?.message ?? e}`);
    }
  }

  /**
   * Browsers answer the server's protocol pings without telling the page, so silence cannot be
   * measured directly: after `heartbeat_ms` without a frame, send a `ping` command; if nothing at
   * all arrives for twice that (plus a margin), the connection is presumed dead.
   */
  _startHeartbeat(heartbeatMs) {
    if (!(heartbeatMs > 0)) return;
    this._lastRx = Date.now();
    const tick = Math.max(250, Math.floor(heartbeatMs / 2));
    this._hb = setInterval(() => {
      const quiet = Date.now() - this._lastRx;
      if (quiet >= 2 * heartbeatMs + 2000) return this._lost(`no frame for ${quiet} ms: server presumed dead`);
      if (quiet >= heartbeatMs) this.send({ v: 1, type: 'ping', id: `hb-${++this._hbSeq}` });
    }, tick);
    this._hb.unref?.();
  }

  _lost(reason) {
    try { this.ws.close(); } catch { /* ignore */ }
    this._end({ code: null, reason });
  }

  _detachSocket() {
    if (!this.ws) return;
    this.ws.onopen = this.ws.onmessage = this.ws.onclose = null;
    this.ws.onerror = () => {};
  }

  _cleanup() {
    clearInterval(this._hb);
    this._detachSocket();
  }

  close(code = 1000, reason = 'client closed') {
    this.detach();
    this.ended = true;
    this._cleanup();
    try { this.ws?.close(code, reason); } catch { /* ignore */ }
  }
}

/**
 * A long-polling session (docs/protocol.md, "Long-polling transport"): one `recv` outstanding at a
 * time, acknowledging the last non-empty batch; client frames sent in numbered batches, one POST at
 * a time, a batch re-sent with its number after a network error (the server applies it once).
 */
class PollLink extends BaseLink {
  constructor(url, { fetch, codec, token, openTimeoutMs, pollTimeoutMs }) {
    super(url);
    this.transport = 'polling';
    this.base = pollBaseFromWs(url);
    this._fetch = fetch;
    this._codec = codec;
    this._token = token;
    this._openTimeoutMs = openTimeoutMs;
    this._pollTimeoutMs = pollTimeoutMs;
    this.session = null;
    this.ack = 0; // seq of the last non-empty batch processed
    this.sendSeq = 0; // seq of the last batch handed to the send loop
    this._queue = []; // frames waiting for a send batch
    this._inflight = null; // { seq, frames } being sent (re-sent as is after a network error)
    this._sending = false;
    this._abort = new AbortController(); // ends every request of the link at once
  }

  _headers(withBody) {
    const h = {};
    if (this.session) h['Herald-Session'] = this.session;
    if (this._token) h.Authorization = `Bearer ${this._token}`;
    if (withBody) h['Content-Type'] = this._codec.contentType;
    return h;
  }

  async _body(res) {
    return this._codec.name === 'msgpack' ? new Uint8Array(await res.arrayBuffer()) : await res.text();
  }

  async open() {
    const timeout = new AbortController();
    const timer = setTimeout(() => timeout.abort(), this._openTimeoutMs);
    let res;
    try {
      res = await this._fetch(`${this.base}/open?encoding=${this._codec.name}`, {
        method: 'POST',
        headers: this._headers(false),
        signal: timeout.signal,
      });
    } catch (e) {
      throw openError('retry', `poll open failed: ${e?.message ?? e}`);
    } finally {
      clearTimeout(timer);
    }
    if (res.status !== 200) {
      const kind = classifyStatus(res.status);
      const ra = Number(res.headers?.get?.('Retry-After'));
      throw openError(kind, `poll open: HTTP ${res.status}`, {
        status: res.status,
        retryAfterMs: Number.isFinite(ra) && ra > 0 ? ra * 1000 : undefined,
      });
    }
    let batch;
    try {
      batch = this._codec.decodeBatch(await this._body(res));
    } catch (e) {
      throw openError('retry', `poll open: bad batch (${e?.message ?? e})`);
    }
    const frames = batch.frames || [];
    const welcome = frames.find((f) => f.type === 'welcome');
    if (!welcome) {
      const d = frames.find((f) => f.type === 'disconnect');
      throw d ? openErrorFromDisconnect(d) : openError('retry', 'poll open: no welcome');
    }
    this.session = batch.session;
    this.welcome = welcome;
    if (frames.length > 0) this.ack = batch.seq;
    for (const f of frames) if (f !== welcome) this._handle(f);
    this._recvLoop();
    return this;
  }

  _handle(f) {
    this._frame(f);
    // A `disconnect` is the last frame of a session: it ends like a WebSocket close with its code.
    if (f.type === 'disconnect') this._end({ code: f.code, reason: f.reason, reconnect: f.reconnect });
  }

  /** Keeps exactly one `recv` outstanding until the link ends. */
  async _recvLoop() {
    let failures = 0;
    while (!this.ended) {
      const timeout = new AbortController();
      const onAbort = () => timeout.abort();
      this._abort.signal.addEventListener('abort', onAbort);
      const timer = setTimeout(() => timeout.abort(), this._pollTimeoutMs);
      let res;
      let body;
      try {
        res = await this._fetch(`${this.base}/recv?ack=${this.ack}`, {
          method: 'GET',
          headers: this._headers(false),
          signal: timeout.signal,
        });
        if (res.status === 200) body = await this._body(res);
      } catch {
        res = null; // network error or a poll cut: poll again with the same ack
      } finally {
        clearTimeout(timer);
        this._abort.signal.removeEventListener('abort', onAbort);
      }
      if (this.ended) return;
      if (res && res.status === 200) {
        let batch;
        try {
          batch = this._codec.decodeBatch(body);
        } catch {
          batch = null;
        }
        if (batch) {
          failures = 0;
          const frames = batch.frames || [];
          // An empty batch echoes our ack and is not numbered: the ack stays. A batch we already
          // processed (seq <= ack) cannot be new; it is skipped.
          if (frames.length > 0 && batch.seq > this.ack) {
            this.ack = batch.seq;
            for (const f of frames) {
              if (this.ended) return;
              this._handle(f);
            }
          }
          continue;
        }
      } else if (res && (res.status === 404 || res.status === 410)) {
        return this._end({ code: null, reason: `poll session gone (HTTP ${res.status})` });
      } else if (res && (res.status === 401 || res.status === 403)) {
        return this._end({ code: null, reason: `poll: HTTP ${res.status}`, auth: true });
      }
      failures += 1;
      await sleep(pollRetryDelay(failures), this._abort.signal);
    }
  }

  send(frame) {
    if (this.ended) return;
    this._queue.push(frame);
    this._pump();
  }

  /** Sends one batch at a time; a batch that failed on the network is re-sent with the same seq. */
  async _pump() {
    if (this._sending || this.ended) return;
    if (!this._inflight) {
      if (this._queue.length === 0) return;
      this._inflight = { seq: ++this.sendSeq, frames: this._queue.splice(0, MAX_SEND_BATCH) };
    }
    this._sending = true;
    let failures = 0;
    while (!this.ended && this._inflight) {
      const batch = this._inflight;
      let res = null;
      try {
        res = await this._fetch(`${this.base}/send?seq=${batch.seq}`, {
          method: 'POST',
          headers: this._headers(true),
          body: this._codec.encodeBatch(batch.frames),
          signal: this._abort.signal,
        });
      } catch {
        res = null;
      }
      if (this.ended) break;
      if (res && (res.status === 204 || res.status === 200 || res.status === 413)) {
        // 413: the server closes the session with 1009; its disconnect comes through recv.
        failures = 0;
        this._inflight = this._queue.length
          ? { seq: ++this.sendSeq, frames: this._queue.splice(0, MAX_SEND_BATCH) }
          : null;
        continue;
      }
      if (res && (res.status === 404 || res.status === 410)) {
        this._end({ code: null, reason: `poll session gone (HTTP ${res.status})` });
        break;
      }
      if (res && (res.status === 401 || res.status === 403)) {
        this._end({ code: null, reason: `poll send: HTTP ${res.status}`, auth: true });
        break;
      }
      if (res && res.status !== 429 && res.status < 500) {
        // 400/409/415: our batches and the server disagree; a new session is the way out.
        this._end({ code: null, reason: `poll send: HTTP ${res.status}` });
        break;
      }
      failures += 1; // network error, 429 or 5xx: the same batch again, same seq
      await sleep(pollRetryDelay(failures), this._abort.signal);
    }
    this._sending = false;
  }

  _cleanup() {
    this._abort.abort();
  }

  /** Ends the session on the server (`POST /poll/close`), without waiting for the answer. */
  close() {
    const wasEnded = this.ended;
    this.detach();
    this.ended = true;
    this._cleanup();
    if (wasEnded || !this.session) return;
    Promise.resolve()
      .then(() => this._fetch(`${this.base}/close`, { method: 'POST', headers: this._headers(false) }))
      .catch(() => {});
  }
}

// ---------------------------------------------------------------------------------------------
// The client
// ---------------------------------------------------------------------------------------------

const DEFAULTS = {
  encoding: 'json',
  transports: ['websocket', 'polling'],
  wsOpenTimeoutMs: 5000,
  wsRetryMs: 30000,
  connectTimeoutMs: 10000, // welcome after the socket opened; poll open
  pollTimeoutMs: 45000, // a held poll is cut by the client after this (the server holds ≤ 30 s)
  stableAfterMs: 5000, // a connection lost sooner counts as a failed attempt (no hammering)
  commandRetries: 3, // re-sends of a command refused with `unavailable`
  idMemory: 4096,
};

export class HeraldClient {
  constructor(options = {}) {
    const o = { ...DEFAULTS, ...options };
    this.options = o;
    const urls = o.urls ?? (o.url ? [o.url] : []);
    this._endpoints = new Endpoints(urls);
    this._codec = makeCodec(o.encoding, o.msgpack);
    this._WebSocket = o.WebSocket ?? globalThis.WebSocket;
    const f = o.fetch ?? globalThis.fetch;
    // Called unbound, a browser's fetch complains of an illegal invocation.
    this._fetch = f ? (...a) => f.apply(globalThis, a) : null;
    this._transports = o.transports;
    this._backoff = new Backoff(o.backoff);
    this._token = o.token;
    this._getToken = o.getToken;
    this._blockWs = false;
    this._wsBlocked = new Set(); // endpoints where a WebSocket did not open but polling did

    this._listeners = new Map();
    this._subs = new Map(); // channel → { channel, dedup, onMessage, first, links: Set, since }
    this._ops = new Map(); // id → op, in sending order
    this._nextId = 1;

    this.link = null; // the active link
    this._candidate = null; // a WebSocket being moved to (make-before-break)
    this._migrating = null; // channels whose resubscribe on the candidate is not answered yet
    this._state = 'closed';
    this._everConnected = false;
    this._running = false;
    this._closed = false;
    this._connectWaiters = [];
    this._wake = null; // ends the backoff sleep early (close, blockWebSocket)
    this._linkEnd = null; // resolves the wait on the active link
    this._wsRetryTimer = null;
  }

  // ----- events -----

  on(event, fn) {
    if (!this._listeners.has(event)) this._listeners.set(event, new Set());
    this._listeners.get(event).add(fn);
    return this;
  }

  off(event, fn) {
    this._listeners.get(event)?.delete(fn);
    return this;
  }

  _emit(event, payload) {
    for (const fn of [...(this._listeners.get(event) ?? [])]) {
      try {
        fn(payload);
      } catch (e) {
        // An application bug must not break the connection logic.
        if (event !== 'error') this._emit('error', { type: 'listener', event, error: e });
      }
    }
  }

  _setState(state, extra = {}) {
    this._state = state;
    this._emit('state', {
      state,
      transport: state === 'connected' ? this.link?.transport ?? null : null,
      url: extra.url ?? this._endpoints.current,
      attempt: extra.attempt ?? this._backoff.failures + 1,
      ...extra,
    });
  }

  // ----- public getters -----

  get state() {
    return this._state;
  }

  get transport() {
    return this._state === 'connected' ? this.link?.transport ?? null : null;
  }

  get blockWebSocket() {
    return this._blockWs;
  }

  /** The page says WebSocket is blocked: use long-polling only (and back again when cleared). */
  set blockWebSocket(v) {
    this._blockWs = !!v;
    if (this._blockWs) {
      this._dropCandidate();
      clearTimeout(this._wsRetryTimer);
      // Leave a WebSocket now: the next attempt (immediate, no backoff) uses polling.
      if (this.link?.transport === 'websocket') this._endActive({ code: null, reason: 'WebSocket blocked by the application', immediate: true });
    } else {
      this._scheduleWsRetry(0);
    }
  }

  position(channel) {
    return this._subs.get(channel)?.dedup.position ?? null;
  }

  // ----- lifecycle -----

  /** Starts the client; resolves at the first 'connected', rejects if it closes or gives up first. */
  connect() {
    if (this._closed) return Promise.reject(new HeraldError('closed', 'client closed'));
    if (this._state === 'connected') return Promise.resolve();
    const p = new Promise((resolve, reject) => this._connectWaiters.push({ resolve, reject }));
    if (!this._running) {
      this._running = true;
      this._run().catch((e) => this._giveUp(`internal error: ${e?.stack ?? e}`));
    }
    return p;
  }

  /** Ends everything: state 'closed', no reconnect, pending commands rejected. */
  close() {
    if (this._closed) return;
    this._closed = true;
    clearTimeout(this._wsRetryTimer);
    this._dropCandidate();
    const link = this.link;
    this.link = null;
    link?.close();
    this._linkEnd?.({ closed: true });
    this._wake?.();
    // Final at once, even while an open is in flight (the loop then drops what it opened).
    this._finish(new HeraldError('closed', 'client closed'), {});
  }

  // ----- commands -----

  /** Sends a command (`{type, ...}`) and resolves with the reply's `result` (rejects with the error). */
  request(cmd) {
    return new Promise((resolve, reject) => {
      if (this._closed) return reject(new HeraldError('closed', 'client closed'));
      this._pushOp({ frame: { ...cmd }, resolve, reject });
      this._flush();
    });
  }

  /** Publishes with a fresh idempotency key, re-sent with the same key until answered. */
  publish(channel, data) {
    return this.request({ type: 'publish', channel, data, key: newKey() });
  }

  presence(channel, opts = {}) {
    return this.request({ type: 'presence', channel, ...opts });
  }

  history(channel, opts = {}) {
    return this.request({ type: 'history', channel, ...opts });
  }

  /**
   * Subscribes; resolves with the first subscribe reply. The subscription survives reconnects and
   * transport changes (resumed with `since`). `since` starts from a known position.
   */
  subscribe(channel, { since, onMessage } = {}) {
    return new Promise((resolve, reject) => {
      if (this._closed) return reject(new HeraldError('closed', 'client closed'));
      if (this._subs.has(channel)) return reject(new HeraldError('already_subscribed', `already subscribed to ${channel}`));
      const sub = {
        channel,
        dedup: new Dedup(since ?? null, this.options.idMemory),
        onMessage,
        first: { resolve, reject },
        links: new Set(), // links on which its subscribe was answered
      };
      this._subs.set(channel, sub);
      if (this.link) this._pushSubscribe(sub, null);
      this._flush();
    });
  }

  unsubscribe(channel) {
    const sub = this._subs.get(channel);
    if (!sub) return Promise.reject(new HeraldError('not_subscribed', `not subscribed to ${channel}`));
    this._subs.delete(channel);
    sub.first?.reject(new HeraldError('not_subscribed', 'unsubscribed before the subscription was established'));
    // A subscribe not sent yet is simply forgotten.
    for (const [id, op] of this._ops) {
      if (op.frame.type === 'subscribe' && op.frame.channel === channel && !op.sentOn) this._ops.delete(id);
    }
    if (this._candidate && sub.links.has(this._candidate)) {
      this._pushOp({ frame: { type: 'unsubscribe', channel }, target: this._candidate });
    }
    this._migrating?.delete(channel);
    if (!this.link) return Promise.resolve({});
    return new Promise((resolve, reject) => {
      this._pushOp({ frame: { type: 'unsubscribe', channel }, resolve, reject });
      this._flush();
      this._maybeCompleteUpgrade();
    });
  }

  // ----- ops -----

  _pushOp(op) {
    const id = this._nextId++;
    this._ops.set(id, { sentOn: null, retries: 0, notBefore: 0, ...op });
    return id;
  }

  _pushSubscribe(sub, target) {
    const frame = { type: 'subscribe', channel: sub.channel };
    const since = sub.dedup.position;
    if (since) frame.since = since;
    return this._pushOp({ frame, sub, target });
  }

  /** Sends every op that is due and not sent yet, each on its target link or the active one. */
  _flush() {
    const now = Date.now();
    for (const [id, op] of this._ops) {
      if (op.sentOn || op.notBefore > now) continue;
      const link = op.target ?? this.link;
      if (!link || link.ended) continue;
      // While moving to a WebSocket, new commands wait for it rather than start on the old link.
      if (!op.target && this._candidate && op.frame.type !== 'unsubscribe') continue;
      op.sentOn = link;
      link.send({ v: 1, id, ...op.frame });
    }
  }

  // ----- the connection loop -----

  async _run() {
    let lastToken;
    let lossInfo = {};
    while (!this._closed) {
      const url = this._endpoints.current;
      let token;
      try {
        if (this._freshToken) token = this._freshToken;
        else token = this._getToken ? await this._getToken() : this._token;
      } catch (e) {
        token = this._token;
        this._emit('error', { type: 'token', error: e });
      }
      this._freshToken = null;
      this._token = token;
      lastToken = token;
      if (this._closed) break;

      let link = null;
      let failure = null;
      try {
        link = await this._open(url, token);
      } catch (e) {
        failure = e;
      }
      if (this._closed) {
        link?.close();
        break;
      }

      if (link) {
        const end = await this._serve(link);
        if (this._closed || end.closed) break;
        this._onConnectionLost();
        lossInfo = { code: end.code ?? undefined, reason: end.reason };
        if (end.immediate) {
          this._setState('reconnecting', { ...lossInfo, delayMs: 0 });
          continue;
        }
        const advice = end.auth ? 'reauth' : closeAdvice(end.code, end.reconnect);
        if (advice === 'stop') {
          return this._giveUp(`closed with ${end.code} (${end.reason}): not reconnecting`, lossInfo);
        }
        if (Date.now() - this._connectedAt >= this.options.stableAfterMs) this._backoff.reset();
        else if (!this._backoff.recordFailure()) {
          return this._giveUp(`${this._backoff.failures} attempts failed, last: ${end.reason}`, lossInfo);
        }
      } else {
        lossInfo = { code: failure.status, reason: failure.reason ?? String(failure) };
        if (failure.kind === 'fatal' || !failure.kind) return this._giveUp(lossInfo.reason, lossInfo);
        if (failure.kind === 'unauthorized') {
          // Retry a refused token only if the application has a new one.
          let fresh;
          try {
            fresh = this._getToken ? await this._getToken() : undefined;
          } catch {
            fresh = undefined;
          }
          if (!fresh || fresh === lastToken) {
            return this._giveUp(`refused (${lossInfo.reason}) and no new token`, lossInfo);
          }
          this._freshToken = fresh; // used by the next attempt as is
        }
        if (!this._backoff.recordFailure()) {
          return this._giveUp(`${this._backoff.failures} attempts failed, last: ${lossInfo.reason}`, lossInfo);
        }
      }
      // Whatever failed or went away, the next attempt goes to another node of the list.
      this._endpoints.advance();
      let delay = this._backoff.delay();
      if (failure?.retryAfterMs) delay = Math.max(delay, failure.retryAfterMs);
      this._setState(this._everConnected ? 'reconnecting' : 'connecting', { ...lossInfo, delayMs: Math.round(delay) });
      await this._sleep(delay);
    }
    this._finish(new HeraldError('closed', 'client closed'), {});
  }

  _sleep(ms) {
    return new Promise((resolve) => {
      const t = setTimeout(done, ms);
      const self = this;
      function done() {
        clearTimeout(t);
        if (self._wake === done) self._wake = null;
        resolve();
      }
      this._wake = done;
    });
  }

  /** Opens a session on `url`: WebSocket first, long-polling when the WebSocket is blocked. */
  async _open(url, token) {
    const o = this.options;
    const wantWs = this._transports.includes('websocket');
    const canPoll = this._transports.includes('polling') && !!this._fetch;
    const tryWs = wantWs && !!this._WebSocket && !this._blockWs && !(canPoll && this._wsBlocked.has(url));
    if (this._state === 'closed') this._setState('connecting', { url });
    if (tryWs) {
      try {
        return await this._openWs(url, token);
      } catch (e) {
        if (e.kind !== 'blocked' || !canPoll || this._closed) {
          if (e.kind === 'blocked') e.kind = 'retry';
          throw e;
        }
      }
    }
    if (!canPoll) throw openError('retry', 'no usable transport (WebSocket blocked and polling disabled)');
    const link = await new PollLink(url, {
      fetch: this._fetch,
      codec: this._codec,
      token,
      openTimeoutMs: o.connectTimeoutMs,
      pollTimeoutMs: o.pollTimeoutMs,
    }).open();
    // Polling works where the WebSocket did not: remember it, so reconnects to this endpoint do
    // not wait for a WebSocket timeout each time (the background retry clears it).
    if (tryWs) this._wsBlocked.add(url);
    return link;
  }

  _openWs(url, token) {
    return new WsLink(url, {
      WebSocket: this._WebSocket,
      codec: this._codec,
      token,
      openTimeoutMs: this.options.wsOpenTimeoutMs,
      welcomeTimeoutMs: this.options.connectTimeoutMs,
    }).open();
  }

  /** Serves the active link (which may change to an upgraded WebSocket) until it is lost. */
  _serve(link) {
    return new Promise((resolve) => {
      this._linkEnd = (end) => {
        this._linkEnd = null;
        resolve(end);
      };
      this._activate(link);
      this._connectedAt = Date.now();
      this._everConnected = true;
      this._setState('connected', { url: link.url, session: link.welcome?.session, user: link.welcome?.user, node: link.welcome?.node });
      for (const w of this._connectWaiters.splice(0)) w.resolve();
      this._scheduleWsRetry();
      this._flush();
    });
  }

  /** Makes `link` the active one: its frames are handled, its end ends the wait in _serve. */
  _activate(link) {
    this.link = link;
    link.attach(
      (f) => this._onFrame(link, f),
      (end) => {
        if (this.link === link) this._linkEnd?.(end);
      },
    );
    // Resubscribes go before re-sent commands: rebuild the op order with them first.
    const resubs = new Map();
    const rest = this._ops;
    this._ops = resubs;
    const pending = new Set();
    for (const op of rest.values()) if (op.frame.type === 'subscribe' && !op.target) pending.add(op.sub);
    for (const sub of this._subs.values()) {
      if (!sub.links.has(link) && !pending.has(sub)) this._pushSubscribe(sub, null);
    }
    for (const [id, op] of rest) resubs.set(id, op);
  }

  /** Ends the active link on purpose (e.g. to switch transport). */
  _endActive(end) {
    const link = this.link;
    if (!link) return;
    link.close();
    this._linkEnd?.(end);
  }

  /**
   * After a connection is gone: unanswered commands go again on the next connection, subscribes
   * are rebuilt from the subscriptions, unsubscribes are done (the new session does not hold them).
   */
  _onConnectionLost() {
    clearTimeout(this._wsRetryTimer);
    this._dropCandidate();
    const old = this.link;
    this.link = null;
    old?.close();
    for (const [id, op] of this._ops) {
      if (op.frame.type === 'subscribe') this._ops.delete(id);
      else if (op.frame.type === 'unsubscribe') {
        op.resolve?.({});
        this._ops.delete(id);
      } else op.sentOn = null;
    }
    for (const sub of this._subs.values()) sub.links.clear();
  }

  _giveUp(reason, info = {}) {
    this._closed = true;
    this._onConnectionLost();
    const err = new HeraldError('gave_up', reason);
    this._emit('error', { type: 'gave_up', reason, code: info.code });
    this._finish(err, { ...info, reason });
  }

  /** Rejects everything pending and emits the final 'closed'. */
  _finish(err, info) {
    if (this._finished) return;
    this._finished = true;
    this._running = false;
    clearTimeout(this._wsRetryTimer);
    for (const op of this._ops.values()) op.reject?.(err);
    this._ops.clear();
    for (const sub of this._subs.values()) sub.first?.reject(err);
    for (const w of this._connectWaiters.splice(0)) w.reject(err);
    this._setState('closed', info);
  }

  // ----- frames -----

  _onFrame(link, f) {
    switch (f.type) {
      case 'reply':
      case 'error':
        return this._onAnswer(link, f);
      case 'message':
        return this._onMessage(link, f);
      case 'join':
      case 'leave':
        if (this._subs.has(f.channel)) this._emit(f.type, strip(f));
        return;
      case 'unsubscribed': {
        const sub = this._subs.get(f.channel);
        if (sub) {
          this._subs.delete(f.channel);
          this._emit('unsubscribed', strip(f));
        }
        return;
      }
      default:
        return; // welcome, disconnect (handled by the link), unknown frames
    }
  }

  _onAnswer(link, f) {
    const op = typeof f.id === 'number' ? this._ops.get(f.id) : undefined;
    if (!op) {
      if (f.type === 'error' && f.id == null) this._emit('error', { type: 'server', code: f.code, message: f.message, frame: f });
      return;
    }
    this._ops.delete(f.id);
    if (f.type === 'error' && f.code === 'unavailable' && op.retries < this.options.commandRetries) {
      // The node cannot serve this now: the same command again later (publishes keep their key).
      op.retries += 1;
      op.sentOn = null;
      const wait = f.retry_after_ms ?? 500;
      op.notBefore = Date.now() + wait;
      this._ops.set(f.id, op);
      setTimeout(() => this._flush(), wait + 1);
      return;
    }
    if (op.frame.type === 'subscribe') return this._onSubscribeAnswer(link, op, f);
    if (f.type === 'reply') return op.resolve?.(f.result);
    if (op.frame.type === 'unsubscribe' && f.code === 'not_subscribed') return op.resolve?.({});
    op.reject?.(new HeraldError(f.code, f.message, { retryAfterMs: f.retry_after_ms, frame: f }));
  }

  _onSubscribeAnswer(link, op, f) {
    const sub = this._subs.get(op.frame.channel);
    if (sub !== op.sub) {
      // Unsubscribed while the subscribe was in flight: undo it on the server.
      if (f.type === 'reply') this._pushOp({ frame: { type: 'unsubscribe', channel: op.frame.channel }, target: link });
      this._flush();
      return this._maybeCompleteUpgrade();
    }
    if (f.type === 'error') {
      this._subs.delete(sub.channel);
      const err = new HeraldError(f.code, f.message, { frame: f, channel: sub.channel });
      if (sub.first) sub.first.reject(err);
      else this._emit('error', { type: 'subscription', channel: sub.channel, code: f.code, message: f.message });
      this._migrating?.delete(sub.channel);
      return this._maybeCompleteUpgrade();
    }
    const outcome = sub.dedup.onSubscribed(f.result, !!op.frame.since);
    sub.links.add(link);
    if (sub.first) {
      sub.first.resolve(f.result);
      sub.first = null;
    }
    if (outcome === 'not_recovered') {
      this._emit('not_recovered', { channel: sub.channel, epoch: f.result.epoch, offset: f.result.offset });
    }
    if (link === this._candidate) {
      this._migrating?.delete(sub.channel);
      this._maybeCompleteUpgrade();
    }
  }

  _onMessage(link, f) {
    const sub = this._subs.get(f.channel);
    // Only a link whose subscribe was answered delivers; dedup drops what the other link (during
    // a transport move) or a replay after a resume already delivered.
    if (!sub || !sub.links.has(link) || !sub.dedup.accept(f)) return;
    const m = strip(f);
    if (sub.onMessage) {
      try {
        sub.onMessage(m);
      } catch (e) {
        this._emit('error', { type: 'listener', event: 'onMessage', error: e });
      }
    }
    this._emit('message', m);
  }

  // ----- moving back to a WebSocket (make-before-break) -----

  _wantWsRetry() {
    return (
      !this._closed &&
      this.link?.transport === 'polling' &&
      !this._blockWs &&
      !!this._WebSocket &&
      this._transports.includes('websocket')
    );
  }

  _scheduleWsRetry(ms = this.options.wsRetryMs) {
    clearTimeout(this._wsRetryTimer);
    if (!this._wantWsRetry() || this._candidate) return;
    this._wsRetryTimer = setTimeout(() => this._tryUpgrade(), ms);
  }

  /**
   * While on polling: open a WebSocket to the same endpoint; once welcomed, resubscribe every
   * channel on it from its last delivered position, and switch when all are answered. Both links
   * deliver meanwhile; dedup removes the overlap, `since` leaves no gap.
   */
  async _tryUpgrade() {
    if (!this._wantWsRetry() || this._candidate) return;
    const pollLink = this.link;
    let ws;
    try {
      ws = await this._openWs(pollLink.url, this._token);
    } catch {
      if (this.link === pollLink) this._scheduleWsRetry();
      return;
    }
    if (this.link !== pollLink || !this._wantWsRetry() || this._candidate) {
      ws.close();
      return;
    }
    this._candidate = ws;
    this._migrating = new Set();
    ws.attach(
      (f) => this._onFrame(ws, f),
      () => {
        // The new WebSocket failed before the move: stay on polling, try again later.
        if (this._candidate === ws) {
          this._dropCandidate();
          this._scheduleWsRetry();
          this._flush(); // commands held for the move go on polling after all
        }
      },
    );
    for (const sub of this._subs.values()) {
      // A subscription without a position yet has delivered nothing: it is subscribed afresh
      // after the move (a second "fresh" reply could move its position past undelivered messages).
      if (!sub.dedup.position) continue;
      this._migrating.add(sub.channel);
      this._pushSubscribe(sub, ws);
    }
    this._flush();
    this._maybeCompleteUpgrade();
  }

  _maybeCompleteUpgrade() {
    if (!this._candidate || this._migrating.size > 0) return;
    const ws = this._candidate;
    const old = this.link;
    this._candidate = null;
    this._migrating = null;
    old.close(); // detaches it: its late frames are ignored; POST /poll/close ends the session
    for (const [id, op] of this._ops) {
      if (op.sentOn !== old && !(op.target === old)) continue;
      if (op.frame.type === 'subscribe') this._ops.delete(id);
      else if (op.frame.type === 'unsubscribe') {
        op.resolve?.({});
        this._ops.delete(id);
      } else {
        op.sentOn = null; // re-sent on the WebSocket (publishes keep their key)
        op.target = undefined;
      }
    }
    for (const sub of this._subs.values()) sub.links.delete(old);
    this._wsBlocked.delete(ws.url);
    this._activate(ws); // also subscribes what was not moved
    this._setState('connected', { url: ws.url, session: ws.welcome?.session, user: ws.welcome?.user, node: ws.welcome?.node });
    this._flush();
  }

  _dropCandidate() {
    const ws = this._candidate;
    if (!ws) return;
    this._candidate = null;
    this._migrating = null;
    ws.close();
    for (const [id, op] of this._ops) if (op.target === ws) this._ops.delete(id);
    for (const sub of this._subs.values()) sub.links.delete(ws);
  }
}

/** A frame without its envelope fields (`v`, `type`). */
function strip(f) {
  const { v, type, ...rest } = f;
  return rest;
}

export default HeraldClient;
