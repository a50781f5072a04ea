// The cost of the long-polling fallback, side by side with WebSocket, in one run on one node:
// 100 subscribers of one channel on WebSocket, then 100 on long-polling (the same JS client,
// clients/js/herald.js, in Node), a publisher at 100 msg/s, and for each phase the delivery latency
// (p50/p99, publish call to delivery, same process and clock), the HTTP requests per delivered message
// (long-polling), and the node's CPU per delivery (from /proc/<pid>/stat). The generator's own CPU is
// reported too, and `generator-bound` is printed when it is the limit (over 90% of its one core).
//
//   cargo build --release --bin herald
//   cd benches/polling && npm install && node bench.mjs [--clients 100] [--rate 100] [--secs 20]
//
// Writes ../../target/polling-bench.json.

import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, mkdirSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import WebSocket from 'ws';
import { HeraldClient } from '../../clients/js/herald.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '../..');
const { values: args } = parseArgs({
  options: {
    clients: { type: 'string', default: '100' },
    rate: { type: 'string', default: '100' },
    secs: { type: 'string', default: '20' },
    bin: { type: 'string', default: process.env.BENCH_HERALD_BIN || path.join(root, 'target/release/herald') },
  },
});
const CLIENTS = Number(args.clients);
const RATE = Number(args.rate);
const SECS = Number(args.secs);
const TICKS = 100; // USER_HZ (clock ticks per second of /proc/<pid>/stat) on Linux

async function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => resolve(port)); });
  });
}

function ready(port) {
  return new Promise((resolve) => {
    http.get({ host: '127.0.0.1', port, path: '/readyz' }, (r) => { r.resume(); resolve(r.statusCode === 200); })
      .on('error', () => resolve(false));
  });
}

function cpuTicks(pid) {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return Number(f[11]) + Number(f[12]); // utime + stime (fields 14, 15)
}

function percentile(sorted, p) {
  if (!sorted.length) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

/** fetch that counts its requests. */
function countingFetch(counter) {
  return (...a) => { counter.requests += 1; return fetch(...a); };
}

async function phase(name, node, transports) {
  const channel = `bench:${name}`;
  const counter = { requests: 0 };
  const latencies = [];
  let delivered = 0;
  const sent = new Map();
  const subs = [];
  for (let i = 0; i < CLIENTS; i += 1) {
    const c = new HeraldClient({
      url: `ws://127.0.0.1:${node.port}/ws`, WebSocket, fetch: countingFetch(counter), transports,
    });
    c.on('message', (m) => {
      const t0 = sent.get(m.data.n);
      if (t0 !== undefined) latencies.push(performance.now() - t0);
      delivered += 1;
    });
    await c.connect();
    await c.subscribe(channel);
    subs.push(c);
  }
  const pub = new HeraldClient({ url: `ws://127.0.0.1:${node.port}/ws`, WebSocket });
  await pub.connect();
  await sleep(500);
  const requestsBefore = counter.requests;
  const cpu0 = cpuTicks(node.pid);
  const gen0 = process.cpuUsage();
  const wall0 = performance.now();
  const total = RATE * SECS;
  const every = 1000 / RATE;
  for (let n = 1; n <= total; n += 1) {
    // Open loop: each publish leaves at its time, whether the last one was answered or not.
    const due = wall0 + n * every;
    const wait = due - performance.now();
    if (wait > 1) await sleep(wait);
    sent.set(n, performance.now());
    pub.publish(channel, { n }).catch(() => {});
  }
  const expected = total * CLIENTS;
  const deadline = performance.now() + 10000;
  while (delivered < expected && performance.now() < deadline) await sleep(50);
  const wall = (performance.now() - wall0) / 1000;
  const cpu = (cpuTicks(node.pid) - cpu0) / TICKS;
  const gen = process.cpuUsage(gen0);
  const genCpu = (gen.user + gen.system) / 1e6;
  const requests = counter.requests - requestsBefore;
  for (const c of subs) c.close();
  pub.close();
  latencies.sort((a, b) => a - b);
  const result = {
    transport: name,
    clients: CLIENTS,
    rate: RATE,
    secs: SECS,
    delivered,
    expected,
    p50_ms: Number(percentile(latencies, 50).toFixed(2)),
    p99_ms: Number(percentile(latencies, 99).toFixed(2)),
    http_requests_per_delivery: Number((requests / Math.max(1, delivered)).toFixed(3)),
    server_cpu_s: Number(cpu.toFixed(2)),
    server_cpu_us_per_delivery: Number(((cpu * 1e6) / Math.max(1, delivered)).toFixed(2)),
    generator_cpu_share: Number((genCpu / wall).toFixed(2)),
  };
  result.generator_bound = result.generator_cpu_share > 0.9;
  await sleep(1000);
  return result;
}

const dir = mkdtempSync(path.join(os.tmpdir(), 'herald-polling-bench-'));
const port = await freePort();
const adminPort = await freePort();
const child = spawn(path.resolve(args.bin), ['serve', '--listen', `127.0.0.1:${port}`, '--admin-listen', `127.0.0.1:${adminPort}`,
  '--data-dir', path.join(dir, 'data')], {
  cwd: dir,
  env: {
    // herald reads every HERALD_* variable as configuration: none of the caller's pass through.
    ...Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('HERALD_'))),
    HERALD_AUTH__ANONYMOUS: 'true',
    HERALD_LIMITS__CONNECTS_PER_SECOND_PER_IP: '100000',
    HERALD_LIMITS__MAX_CONNECTIONS_PER_IP: '100000',
    RUST_LOG: 'warn',
  },
  stdio: 'inherit',
});
try {
  for (let i = 0; !(await ready(adminPort)); i += 1) {
    if (i > 200) throw new Error('the node did not start');
    await sleep(50);
  }
  const node = { port, pid: child.pid };
  const ws = await phase('websocket', node, ['websocket']);
  const lp = await phase('polling', node, ['polling']);
  const ratio = {
    p50: Number((lp.p50_ms / ws.p50_ms).toFixed(2)),
    p99: Number((lp.p99_ms / ws.p99_ms).toFixed(2)),
    server_cpu_per_delivery: Number((lp.server_cpu_us_per_delivery / ws.server_cpu_us_per_delivery).toFixed(2)),
  };
  const out = { when: new Date().toISOString(), websocket: ws, polling: lp, polling_over_websocket: ratio };
  console.log(JSON.stringify(out, null, 2));
  for (const r of [ws, lp]) if (r.generator_bound) console.log(`generator-bound (${r.transport})`);
  mkdirSync(path.join(root, 'target'), { recursive: true });
  writeFileSync(path.join(root, 'target/polling-bench.json'), JSON.stringify(out, null, 2));
} finally {
  child.kill('SIGKILL');
  rmSync(dir, { recursive: true, force: true });
}
