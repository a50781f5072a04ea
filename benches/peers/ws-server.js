// Raw `ws` broadcast server speaking herald's JSON subset (welcome, subscribe/publish -> reply,
// message with `data` echoed). Each publish is serialised once and sent to every subscriber.
// Usage: node ws-server.js [--listen 127.0.0.1:0]   prints "listening ws=ADDR"
'use strict';
const { WebSocketServer } = require('ws');

const arg = (name, dflt) => { const i = process.argv.indexOf(name); return i > 0 ? process.argv[i + 1] : dflt; };
const [host, port] = arg('--listen', '127.0.0.1:0').split(':');

const channels = new Map(); // name -> { head, subs: Set<ws> }
const channel = (name) => {
  let c = channels.get(name);
  if (!c) { c = { head: 0, subs: new Set() }; channels.set(name, c); }
  return c;
};
let nextSession = 0;

const wss = new WebSocketServer({ host, port: Number(port), perMessageDeflate: false, maxPayload: 64 << 20 });
wss.on('listening', () => {
  const a = wss.address();
  process.stdout.write(`listening ws=${a.address}:${a.port}\n`);
});
wss.on('connection', (ws) => {
  const mine = new Set();
  ws.send(JSON.stringify({ v: 1, type: 'welcome', ts: Date.now(), session: `w${nextSession++}`, node: 'ws', heartbeat_ms: 25000, encoding: 'json', user: null }));
  ws.on('message', (raw) => {
    let cmd;
    try { cmd = JSON.parse(raw); } catch { ws.send(JSON.stringify({ v: 1, type: 'error', ts: Date.now(), id: null, code: 'bad_request', message: 'bad json' })); return; }
    const reply = (result) => ws.send(JSON.stringify({ v: 1, type: 'reply', ts: Date.now(), id: cmd.id, result }));
    const error = (code) => ws.send(JSON.stringify({ v: 1, type: 'error', ts: Date.now(), id: cmd.id ?? null, code, message: code }));
    if (typeof cmd.channel !== 'string' && cmd.type !== 'ping') return error('bad_request');
    switch (cmd.type) {
      case 'subscribe': {
        const c = channel(cmd.channel);
        if (mine.has(cmd.channel)) return error('already_subscribed');
        c.subs.add(ws); mine.add(cmd.channel);
        return reply({ channel: cmd.channel, epoch: 'ws', offset: c.head });
      }
      case 'unsubscribe': {
        if (!mine.has(cmd.channel)) return error('not_subscribed');
        channel(cmd.channel).subs.delete(ws); mine.delete(cmd.channel);
        return reply({});
      }
      case 'publish': {
        const c = channel(cmd.channel);
        const offset = ++c.head;
        const frame = JSON.stringify({ v: 1, type: 'message', ts: Date.now(), channel: cmd.channel, id: `m${offset}`, epoch: 'ws', offset, data: cmd.data });
        for (const s of c.subs) s.send(frame);
        return reply({ id: `m${offset}`, epoch: 'ws', offset });
      }
      case 'ping': return reply({});
      default: return error('unknown_type');
    }
  });
  ws.on('close', () => { for (const name of mine) channel(name).subs.delete(ws); });
  ws.on('error', () => {});
});
