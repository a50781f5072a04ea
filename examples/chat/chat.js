// The chat example: a page served by a herald node in development (`server.examples`), using the
// JavaScript client the node serves at /client/herald.js. It shows channels, messages, who is here,
// the connection state and the transport in use (WebSocket, or long-polling when WebSocket is blocked).
//
// URL options: ?name=alice&channel=chat:lobby&encoding=msgpack&transport=polling&wsRetryMs=5000
// (`encoding=msgpack` loads @msgpack/msgpack's UMD build from `?msgpack=<url>`, jsDelivr by default).
// `window.chat` exposes the client and what arrived, for tests and for poking at it from the console.
import { HeraldClient } from '/client/herald.js';

const params = new URLSearchParams(location.search);
const $ = (id) => document.getElementById(id);
const wsUrl = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`;
const channels = (params.get('channels') || params.get('channel') || 'chat:lobby,chat:random')
  .split(',').map((c) => c.trim()).filter(Boolean);
let current = channels[0];
const received = new Map(); // channel -> messages, in arrival order
const unread = new Map();

async function loadMsgpack() {
  const src = params.get('msgpack')
    || 'https://cdn.jsdelivr.net/npm/@msgpack/msgpack@3/dist.umd/msgpack.min.js';
  await new Promise((resolve, reject) => {
    const s = document.createElement('script');
    s.src = src;
    s.onload = resolve;
    s.onerror = () => reject(new Error(`cannot load ${src}`));
    document.head.append(s);
  });
  return { encode: globalThis.MessagePack.encode, decode: globalThis.MessagePack.decode };
}

function transportsFrom(p) {
  if (p === 'polling') return ['polling'];
  if (p === 'websocket') return ['websocket'];
  return ['websocket', 'polling'];
}

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function renderChannels() {
  const ul = $('channels');
  ul.replaceChildren(...channels.map((c) => {
    const li = el('li', c === current ? 'active' : '', c);
    li.dataset.channel = c;
    const n = unread.get(c) || 0;
    if (n > 0 && c !== current) li.append(el('span', 'unread', String(n)));
    li.onclick = () => select(c);
    return li;
  }));
}

function renderMessage(m) {
  const li = el('li');
  const d = m.data && typeof m.data === 'object' ? m.data : { text: String(m.data) };
  li.append(el('span', 'who', d.name || m.from || 'someone'), el('span', 'text', d.text ?? ''));
  li.append(el('span', 'at', new Date(m.ts || Date.now()).toLocaleTimeString()));
  li.dataset.offset = m.offset;
  return li;
}

function renderMessages() {
  $('current').textContent = current;
  $('messages').replaceChildren(...(received.get(current) || []).map(renderMessage));
  $('messages').scrollTop = $('messages').scrollHeight;
}

function notice(text) {
  $('messages').append(el('li', 'notice', text));
}

async function refreshPresence() {
  try {
    const r = await client.presence(current);
    const names = r.members.map((m) => m.user || `guest ${m.session.slice(-6)}`);
    $('presence').replaceChildren(...names.map((n) => el('li', '', n)));
  } catch (e) {
    $('presence').replaceChildren(el('li', '', `(${e.message || e})`));
  }
}

function select(c) {
  current = c;
  unread.set(c, 0);
  renderChannels();
  renderMessages();
  refreshPresence();
}

const encoding = params.get('encoding') === 'msgpack' ? 'msgpack' : 'json';
const client = new HeraldClient({
  url: params.get('url') || wsUrl,
  encoding,
  msgpack: encoding === 'msgpack' ? await loadMsgpack() : undefined,
  transports: transportsFrom(params.get('transport')),
  wsRetryMs: Number(params.get('wsRetryMs')) || 30000,
  wsOpenTimeoutMs: Number(params.get('wsOpenTimeoutMs')) || 5000,
  token: params.get('token') || undefined,
});
window.chat = { client, received, transports: [], refreshPresence: () => refreshPresence() };

client.on('state', (s) => {
  $('state').textContent = s.state;
  $('state').className = `state ${s.state}`;
  $('transport').textContent = s.transport || '-';
  if (s.node) $('node').textContent = `node ${s.node}`;
  if (s.transport && window.chat.transports.at(-1) !== s.transport) window.chat.transports.push(s.transport);
  if (s.state === 'closed' && s.code) notice(`closed: ${s.code} ${s.reason || ''}`);
});
client.on('message', (m) => {
  if (!received.has(m.channel)) received.set(m.channel, []);
  received.get(m.channel).push(m);
  if (m.channel === current) {
    $('messages').append(renderMessage(m));
    $('messages').scrollTop = $('messages').scrollHeight;
  } else {
    unread.set(m.channel, (unread.get(m.channel) || 0) + 1);
    renderChannels();
  }
});
client.on('not_recovered', (e) => notice(`some messages of ${e.channel} could not be recovered`));
client.on('join', (e) => e.channel === current && refreshPresence());
client.on('leave', (e) => e.channel === current && refreshPresence());

$('name').value = params.get('name') || localStorage.getItem('herald-chat-name') || '';
$('compose').onsubmit = async (ev) => {
  ev.preventDefault();
  const name = $('name').value.trim();
  const text = $('text').value.trim();
  if (!name || !text) return;
  localStorage.setItem('herald-chat-name', name);
  $('text').value = '';
  try {
    await client.publish(current, { name, text });
  } catch (e) {
    notice(`not sent: ${e.message || e}`);
  }
};
$('add-channel').onsubmit = async (ev) => {
  ev.preventDefault();
  const c = $('new-channel').value.trim();
  $('new-channel').value = '';
  if (!c || channels.includes(c)) return select(c || current);
  channels.push(c);
  await client.subscribe(c);
  select(c);
};

renderChannels();
renderMessages();
await client.connect();
for (const c of channels) await client.subscribe(c);
window.chat.ready = true;
refreshPresence();
setInterval(refreshPresence, 3000);
