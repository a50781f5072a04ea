// Type declarations of herald-client (herald.js).

export declare const VERSION: '0.1.0';

/** Close codes after which the client does not reconnect: 1002, 1007, 1008, 1009, 4000, 4004, 4005. */
export declare const NO_RECONNECT_CODES: readonly number[];

export type CloseAdvice = 'reconnect' | 'reauth' | 'stop';
/** The reconnect rule of docs/protocol.md for a close code (and a `disconnect` frame's `reconnect`). */
export declare function closeAdvice(code: number | null | undefined, reconnectFlag?: boolean): CloseAdvice;
/** Whether a close with this code allows reconnecting (4003 does, after re-auth). */
export declare function shouldReconnect(code: number | null | undefined, reconnectFlag?: boolean): boolean;
/** What an HTTP status answered at open means. */
export declare function classifyStatus(status: number): 'unauthorized' | 'retry' | 'fatal';
/** `ws://h/ws` → `http://h/poll`, `wss://` → `https://`. */
export declare function pollBaseFromWs(url: string): string;
/** A fresh idempotency key (a UUID v4). */
export declare function newKey(): string;

export interface BackoffOptions {
  /** First delay window in ms (default 250). */
  baseMs?: number;
  /** Largest window in ms (default 15000). */
  maxMs?: number;
  /** Failed attempts in a row before giving up (default Infinity). */
  maxAttempts?: number;
}

/** Exponential backoff with full jitter. */
export declare class Backoff {
  constructor(options?: BackoffOptions, random?: () => number);
  baseMs: number;
  maxMs: number;
  maxAttempts: number;
  failures: number;
  /** min(maxMs, baseMs * 2^failures). */
  window(failures?: number): number;
  /** Uniform in [0, window()]. */
  delay(): number;
  readonly exhausted: boolean;
  /** false when the attempt cap is reached. */
  recordFailure(): boolean;
  reset(): void;
}

export interface Position {
  epoch: string;
  offset: number;
}

export interface SubscribeResult {
  channel: string;
  epoch: string;
  offset: number;
  recovered?: boolean;
  replayed?: number;
}

/** Resume position and duplicate suppression of one channel. */
export declare class Dedup {
  constructor(since?: Position | null, idMemory?: number);
  last: Position | null;
  readonly position: Position | null;
  onSubscribed(reply: SubscribeResult, resumed: boolean): 'fresh' | 'recovered' | 'not_recovered';
  accept(msg: { id?: string; epoch: string; offset: number }): boolean;
}

/** Endpoint list: random first, a random other one after each loss. */
export declare class Endpoints {
  constructor(urls: string[], random?: () => number);
  urls: string[];
  index: number;
  readonly current: string;
  advance(): void;
}

/** A command refused by the server (`code` is the protocol error code) or by the client. */
export declare class HeraldError extends Error {
  constructor(code: string, message?: string, extra?: object);
  code: string;
  retryAfterMs?: number;
  frame?: Record<string, unknown>;
  channel?: string;
}

export type Transport = 'websocket' | 'polling';
export type ConnectionStateName = 'connecting' | 'connected' | 'reconnecting' | 'closed';

export interface StateEvent {
  state: ConnectionStateName;
  transport: Transport | null;
  url: string;
  attempt: number;
  code?: number;
  reason?: string;
  /** Wait before the next attempt (connecting/reconnecting). */
  delayMs?: number;
  /** Server session id, user and node id (connected). */
  session?: string;
  user?: string | null;
  node?: string;
}

export interface Message {
  channel: string;
  id: string;
  epoch: string;
  offset: number;
  data: unknown;
  from?: string;
  ts: number;
  [field: string]: unknown;
}

export interface PresenceEvent {
  channel: string;
  session: string;
  user: string | null;
  ts: number;
}

export interface NotRecoveredEvent {
  channel: string;
  epoch: string;
  /** The channel's head: live delivery starts after it. */
  offset?: number;
}

export interface ErrorEvent {
  type: 'gave_up' | 'server' | 'subscription' | 'listener' | 'token';
  reason?: string;
  code?: string | number;
  message?: string;
  channel?: string;
  error?: unknown;
  [field: string]: unknown;
}

export interface HeraldEvents {
  state: StateEvent;
  message: Message;
  join: PresenceEvent;
  leave: PresenceEvent;
  not_recovered: NotRecoveredEvent;
  unsubscribed: { channel: string; reason: string; ts: number };
  error: ErrorEvent;
}

export interface MsgpackCodec {
  encode(value: unknown): Uint8Array;
  decode(bytes: Uint8Array | ArrayBuffer): unknown;
}

export interface HeraldClientOptions {
  url?: string;
  urls?: string[];
  token?: string;
  getToken?: () => string | undefined | Promise<string | undefined>;
  encoding?: 'json' | 'msgpack';
  msgpack?: MsgpackCodec;
  WebSocket?: unknown;
  fetch?: typeof globalThis.fetch;
  transports?: Transport[];
  wsOpenTimeoutMs?: number;
  wsRetryMs?: number;
  backoff?: BackoffOptions;
  /** Socket opened → welcome; poll open (default 10000). */
  connectTimeoutMs?: number;
  /** A held poll is abandoned and re-sent after this (default 45000). */
  pollTimeoutMs?: number;
  /** A connection lost sooner counts as a failed attempt (default 5000). */
  stableAfterMs?: number;
  /** Re-sends of a command refused with `unavailable` (default 3). */
  commandRetries?: number;
  /** Recent message ids remembered per channel (default 4096). */
  idMemory?: number;
}

export interface SubscribeOptions {
  since?: Position;
  onMessage?: (m: Message) => void;
}

export interface PublishResult {
  id: string;
  epoch: string;
  offset: number;
}

export declare class HeraldClient {
  constructor(options: HeraldClientOptions);
  readonly options: Required<Pick<HeraldClientOptions, 'encoding' | 'transports' | 'wsOpenTimeoutMs' | 'wsRetryMs'>> & HeraldClientOptions;
  on<E extends keyof HeraldEvents>(event: E, fn: (e: HeraldEvents[E]) => void): this;
  off<E extends keyof HeraldEvents>(event: E, fn: (e: HeraldEvents[E]) => void): this;
  /** Resolves at the first 'connected'; rejects if the client closes or gives up before. */
  connect(): Promise<void>;
  subscribe(channel: string, options?: SubscribeOptions): Promise<SubscribeResult>;
  unsubscribe(channel: string): Promise<Record<string, never>>;
  publish(channel: string, data: unknown): Promise<PublishResult>;
  presence(channel: string, options?: { limit?: number; after?: string }): Promise<{ channel: string; members: { session: string; user: string | null }[]; next: string | null }>;
  history(channel: string, options?: { since?: number; limit?: number }): Promise<{ channel: string; epoch: string; head: number; oldest?: number; messages: Omit<Message, 'ts'>[]; next: number | null }>;
  /** Any command `{type, ...}`; resolves with the reply's `result`, rejects with a HeraldError. */
  request<T = unknown>(cmd: { type: string; [field: string]: unknown }): Promise<T>;
  readonly transport: Transport | null;
  readonly state: ConnectionStateName;
  position(channel: string): Position | null;
  close(): void;
  blockWebSocket: boolean;
}

export default HeraldClient;
