// An in-process fake of a herald node for the client tests: a tiny broker (channels with a log,
// subscribe with `since` and replay, idempotent publish), reachable through a fake WebSocket class
// and a fake fetch that implements the long-polling endpoints with their ack/seq rules. It records
// what the client sent and lets a test push frames, close sessions with codes and inject faults.

const tick = () => new Promise((r) => setImmediate(r));

export function waitFor(cond, timeoutMs = 2000, what = 'condition') {
  const start = Date.now();
  return new Promise((resolve, reject) => {
    const check = () => {
      let v;
      try {
        v = cond();
      } catch (e) {
        return reject(e);
      }
      if (v) return resolve(v);
      if (Date.now() - start > timeoutMs) return reject(new Error(`timed out waiting for ${what}`));
      setTimeout(check, 2);
    };
    check();
  });
}

export const delay = (ms) => new Promise((r) => setTimeout(r, ms));

let sessionCounter = 0;

class Session {
  constructor(broker, transport) {
    this.broker = broker;
    this.transport = transport;
    this.id = (++sessionCounter).toString(16).padStart(32, '0');
    this.subs = new Set();
    this.closed = false;
    // polling state
    this.outbox = [];
    this.seq = 0; // last batch handed out
    this.lastBatch = null;
    this.held = null;
    this.recvSeq = 0; // last client batch applied
  }

  /** Sends a server frame to the client. */
  push(frame) {
    if (this.closed) return;
    const f = { v: 1, ts: Date.now(), ...frame };
    if (this.transport === 'websocket') {
      const ws = this.socket;
      setImmediate(() => ws.readyState === 1 && ws.onmessage?.({ data: JSON.stringify(f) }));
    } else {
      this.outbox.push(f);
      this.held?.wake();
    }
  }

  /** Server-side close: `disconnect` frame then the close, like herald. */
  close(code, reason = 'test', reconnect = ![1002, 1007, 1008, 1009, 4000, 4004, 4005].includes(code)) {
    if (this.closed) return;
    this.push({ type: 'disconnect', code, reason, reconnect });
    this.closed = true;
    this.broker.sessions.delete(this);
    if (this.transport === 'websocket') {
      const ws = this.socket;
      setImmediate(() => ws._serverClose(code, reason));
    } else {
      this.held?.wake();
    }
  }

  /** The session disappears without a word (a dead node): the socket just closes with 1006. */
  kill() {
    this.closed = true;
    this.broker.sessions.delete(this);
    if (this.transport === 'websocket') this.socket._serverClose(1006, '');
    else this.broker.pollSessions.delete(this.id);
  }
}

export class FakeBroker {
  constructor({ pollWaitMs = 40, epoch = 'E1' } = {}) {
    this.pollWaitMs = pollWaitMs;
    this.defaultEpoch = epoch;
    this.channels = new Map();
    this.sessions = new Set();
    this.pollSessions = new Map();
    this.wsMode = 'ok'; // 'ok' | 'fail' (refused before open) | 'hang' (never opens)
    this.pollDown = false; // fetch rejects
    this.openStatus = null; // an HTTP status answered to /poll/open
    this.replayOverlap = 0; // already-delivered messages replayed again on resume (dedup test)
    this.intercept = null; // (session, frame) => true to swallow a client frame
    this.frames = []; // every client frame: { session, transport, frame }
    this.wsUrls = [];
    this.requests = []; // every long-polling request: { path, ack, seq, headers }
    this.faults = []; // { path, kind: 'fail'|'lose'|'status', status }
    const broker = this;
    this.WebSocket = class extends FakeWebSocket {
      constructor(url, protocols) {
        super(broker, url, protocols);
      }
    };
    this.fetch = (url, init) => this._fetch(url, init);
  }

  channel(name) {
    if (!this.channels.has(name)) this.channels.set(name, { epoch: this.defaultEpoch, log: [], keys: new Map(), next: 1 });
    return this.channels.get(name);
  }

  /** Publishes from the server side (or on behalf of a client); delivers to subscribers. */
  publish(name, data, from) {
    const ch = this.channel(name);
    const m = { id: `m-${name}-${ch.epoch}-${ch.next}`, epoch: ch.epoch, offset: ch.next++, data, from };
    ch.log.push(m);
    for (const s of this.sessions) if (s.subs.has(name)) s.push({ type: 'message', channel: name, ...m });
    return m;
  }

  /** Loses a channel's history (new epoch), so a resume cannot recover. */
  resetEpoch(name, epoch) {
    const ch = this.channel(name);
    ch.epoch = epoch;
    ch.log = [];
    ch.next = 1;
  }

  get active() {
    return [...this.sessions];
  }

  _fromClient(session, frame) {
    this.frames.push({ session, transport: session.transport, frame });
    if (session.closed) return;
    if (this.intercept && this.intercept(session, frame)) return;
    const reply = (result) => session.push({ type: 'reply', id: frame.id, result });
    const error = (code, message = code) => session.push({ type: 'error', id: frame.id, code, message });
    const ch = frame.channel != null ? this.channel(frame.channel) : null;
    switch (frame.type) {
      case 'subscribe': {
        if (session.subs.has(frame.channel)) return error('already_subscribed');
        const head = ch.log.length ? ch.log[ch.log.length - 1].offset : 0;
        session.subs.add(frame.channel);
        if (!frame.since) return reply({ channel: frame.channel, epoch: ch.epoch, offset: head });
        if (frame.since.epoch !== ch.epoch) {
          return reply({ channel: frame.channel, epoch: ch.epoch, offset: head, recovered: false, replayed: 0 });
        }
        const from = frame.since.offset - this.replayOverlap;
        const replay = ch.log.filter((m) => m.offset > from);
        reply({ channel: frame.channel, epoch: ch.epoch, offset: head, recovered: true, replayed: replay.length });
        for (const m of replay) session.push({ type: 'message', channel: frame.channel, ...m });
        return;
      }
      case 'unsubscribe':
        if (!session.subs.delete(frame.channel)) return error('not_subscribed');
        return reply({});
      case 'publish': {
        if (frame.key != null && ch.keys.has(frame.key)) return reply(ch.keys.get(frame.key));
        const m = this.publish(frame.channel, frame.data, session.user);
        const result = { id: m.id, epoch: m.epoch, offset: m.offset };
        if (frame.key != null) ch.keys.set(frame.key, result);
        return reply(result);
      }
      case 'presence':
        return reply({
          channel: frame.channel,
          members: this.active.filter((s) => s.subs.has(frame.channel)).map((s) => ({ session: s.id, user: null })),
          next: null,
        });
      case 'history':
        return reply({ channel: frame.channel, epoch: ch.epoch, messages: ch.log.filter((m) => m.offset > (frame.since ?? 0)), next: null });
      case 'ping':
        return reply({});
      default:
        return error('unknown_type');
    }
  }

  _welcome(session) {
    return { type: 'welcome', session: session.id, node: 'fake', heartbeat_ms: 25000, encoding: 'json', user: null };
  }

  // ----- long-polling -----

  async _fetch(url, init = {}) {
    await tick();
    const u = new URL(url);
    const path = u.pathname.replace(/^.*\/poll\//, '');
    const headers = { ...(init.headers || {}) };
    const ack = u.searchParams.has('ack') ? Number(u.searchParams.get('ack')) : undefined;
    const seq = u.searchParams.has('seq') ? Number(u.searchParams.get('seq')) : undefined;
    this.requests.push({ path, ack, seq, headers, url, body: init.body });
    if (this.pollDown) throw new TypeError('fetch failed (server down)');
    const i = this.faults.findIndex((f) => f.path === path && f.kind !== 'loseBatch');
    const fault = i >= 0 ? this.faults.splice(i, 1)[0] : null;
    if (fault?.kind === 'fail') throw new TypeError('fetch failed (injected)');
    if (fault?.kind === 'status') return json(fault.status, { error: 'injected' });
    const res = await this._route(path, u, init, headers, ack, seq);
    if (fault?.kind === 'lose') throw new TypeError('answer lost (injected)');
    // 'loseBatch': the first non-empty batch answered on this path is lost on the way.
    const j = this.faults.findIndex((f) => f.path === path && f.kind === 'loseBatch');
    if (j >= 0 && res.status === 200 && (await res.clone().json()).frames?.length > 0) {
      this.faults.splice(j, 1);
      throw new TypeError('batch lost (injected)');
    }
    return res;
  }

  async _route(path, u, init, headers, ack, seq) {
    if (path === 'open') {
      if (this.openStatus) return json(this.openStatus, { error: 'refused' });
      const s = new Session(this, 'polling');
      s.token = (headers.Authorization || '').replace(/^Bearer /, '') || null;
      this.sessions.add(s);
      this.pollSessions.set(s.id, s);
      s.push(this._welcome(s));
      const batch = this._nextBatch(s, 0);
      return json(200, { ...batch, session: s.id });
    }
    const s = this.pollSessions.get(headers['Herald-Session']);
    if (!s) return json(404, { error: 'unknown_session' });
    if (path === 'recv') return this._recv(s, ack, init.signal);
    if (path === 'send') {
      if (s.closed) return json(410, { error: 'closed' });
      if (seq <= s.recvSeq) return new Response(null, { status: 204 }); // already applied
      if (seq !== s.recvSeq + 1) return json(409, { error: 'out_of_order' });
      s.recvSeq = seq;
      for (const f of JSON.parse(init.body)) this._fromClient(s, f);
      return new Response(null, { status: 204 });
    }
    if (path === 'close') {
      this.pollSessions.delete(s.id);
      s.closed = true;
      this.sessions.delete(s);
      return new Response(null, { status: 204 });
    }
    return json(404, { error: 'not_found' });
  }

  /** The batch answering `ack`, or null when there is nothing to send. */
  _nextBatch(s, ack) {
    if (s.lastBatch && ack < s.lastBatch.seq) return s.lastBatch; // the same batch again
    if (s.outbox.length === 0) return null;
    s.seq += 1;
    s.lastBatch = { seq: s.seq, frames: s.outbox.splice(0) };
    return s.lastBatch;
  }

  async _recv(s, ack, signal) {
    s.held?.wake(true); // one poll at a time: the held one ends empty
    let batch = this._nextBatch(s, ack);
    if (!batch) {
      if (s.closed) {
        this.pollSessions.delete(s.id);
        return json(410, { error: 'closed' });
      }
      const empty = await new Promise((resolve, reject) => {
        const held = {
          wake: (e = false) => {
            clearTimeout(t);
            if (s.held === held) s.held = null;
            resolve(e);
          },
        };
        const t = setTimeout(() => held.wake(true), this.pollWaitMs);
        s.held = held;
        signal?.addEventListener('abort', () => {
          clearTimeout(t);
          if (s.held === held) s.held = null;
          reject(new DOMException('aborted', 'AbortError'));
        });
      });
      batch = empty ? null : this._nextBatch(s, ack);
      if (!batch && s.closed && !empty) {
        this.pollSessions.delete(s.id);
        return json(410, { error: 'closed' });
      }
    }
    return json(200, batch ?? { seq: ack, frames: [] });
  }
}

function json(status, body) {
  return new Response(JSON.stringify(body), { status, headers: { 'Content-Type': 'application/json' } });
}

/** The fake WebSocket: WHATWG-like (`onopen`, `onmessage`, `onclose`, `send`, `close`). */
class FakeWebSocket {
  constructor(broker, url, protocols) {
    this.broker = broker;
    this.url = url;
    this.protocols = protocols;
    this.readyState = 0;
    this.protocol = '';
    broker.wsUrls.push(url);
    const mode = broker.wsMode;
    if (mode === 'hang') return;
    setImmediate(() => {
      if (this.readyState !== 0) return;
      if (mode === 'fail') {
        this.readyState = 3;
        this.onerror?.({});
        this.onclose?.({ code: 1006, reason: '' });
        return;
      }
      this.readyState = 1;
      this.protocol = protocols?.[0] ?? '';
      const s = new Session(broker, 'websocket');
      s.socket = this;
      s.token = new URL(url).searchParams.get('token');
      this.session = s;
      broker.sessions.add(s);
      this.onopen?.({});
      s.push(broker._welcome(s));
    });
  }

  send(data) {
    if (this.readyState !== 1) throw new Error('not open');
    const f = JSON.parse(data);
    setImmediate(() => this.broker._fromClient(this.session, f));
  }

  /** Client-side close. */
  close(code = 1000, reason = '') {
    if (this.readyState >= 2) return;
    this.readyState = 3;
    if (this.session) {
      this.session.closed = true;
      this.broker.sessions.delete(this.session);
    }
    setImmediate(() => this.onclose?.({ code, reason }));
  }

  _serverClose(code, reason) {
    if (this.readyState >= 2) return;
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }
}
