// socket.io (v4 server, protocol v5 over engine.io v4) room broadcast server speaking herald's
// JSON subset inside socket.io events: commands arrive as event "cmd" with the herald command
// object, everything the server sends is event "msg" with the herald frame object. A publish is a
// room broadcast (`io.to(channel).emit`), which socket.io encodes once for the whole room.
// Usage: node sio-server.js [--listen 127.0.0.1:0]   prints "listening ws=ADDR"
'use strict';
const http = require('http');
const { Server } = require('socket.io');

const arg = (name, dflt) => { const i = process.argv.indexOf(name); return i > 0 ? process.argv[i + 1] : dflt; };
const [host, port] = arg('--listen', '127.0.0.1:0').split(':');

const heads = new Map();
const httpServer = http.createServer();
const io = new Server(httpServer, { transports: ['websocket'], perMessageDeflate: false, maxHttpBufferSize: 64 << 20, serveClient: false });

io.on('connection', (socket) => {
  socket.emit('msg', { v: 1, type: 'welcome', ts: Date.now(), session: socket.id, node: 'socket.io', heartbeat_ms: 25000, encoding: 'json', user: null });
  socket.on('cmd', (cmd) => {
    if (!cmd || typeof cmd !== 'object') return socket.emit('msg', { v: 1, type: 'error', ts: Date.now(), id: null, code: 'bad_request', message: 'bad command' });
    const reply = (result) => socket.emit('msg', { v: 1, type: 'reply', ts: Date.now(), id: cmd.id, result });
    const error = (code) => socket.emit('msg', { v: 1, type: 'error', ts: Date.now(), id: cmd.id ?? null, code, message: code });
    if (typeof cmd.channel !== 'string' && cmd.type !== 'ping') return error('bad_request');
    const room = 'c:' + cmd.channel;
    switch (cmd.type) {
      case 'subscribe':
        if (socket.rooms.has(room)) return error('already_subscribed');
        socket.join(room);
        return reply({ channel: cmd.channel, epoch: 'sio', offset: heads.get(cmd.channel) || 0 });
      case 'unsubscribe':
        if (!socket.rooms.has(room)) return error('not_subscribed');
        socket.leave(room);
        return reply({});
      case 'publish': {
        const offset = (heads.get(cmd.channel) || 0) + 1;
        heads.set(cmd.channel, offset);
        io.to(room).emit('msg', { v: 1, type: 'message', ts: Date.now(), channel: cmd.channel, id: `m${offset}`, epoch: 'sio', offset, data: cmd.data });
        return reply({ id: `m${offset}`, epoch: 'sio', offset });
      }
      case 'ping': return reply({});
      default: return error('unknown_type');
    }
  });
});

httpServer.listen(Number(port), host, () => {
  const a = httpServer.address();
  process.stdout.write(`listening ws=${a.address}:${a.port}\n`);
});
