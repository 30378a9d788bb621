// Types of syncws.js, the browser client of the channels protocol (syncws.v1).

export declare const PROTOCOL: "syncws.v1";

/** Whether a client reconnects after a close with `code` (null: no close frame). */
export declare function shouldReconnect(code: number | null, canRefresh: boolean): boolean;

/** Milliseconds before reconnect attempt `attempt` (0 first): min(cap, base * 2^attempt) * random. */
export declare function backoffDelay(attempt: number, base: number, cap: number, random?: number): number;

/** A failed request: a protocol error code, or "timeout", "disconnected", "closed". */
export declare class SyncwsError extends Error {
  constructor(code: string, message: string);
  readonly code: string;
}

export interface ClientOptions {
  /** Sent with the first connect. */
  token?: string | null;
  /** Called for a fresh token: before expiry when the server asks, and for each reconnect. */
  getToken?: () => string | Promise<string>;
  /** Milliseconds a request waits for its reply (10,000). */
  timeout?: number;
  /** Reconnect back-off, milliseconds (500 and 30,000). */
  backoffBase?: number;
  backoffCap?: number;
  /** Milliseconds past the server's heartbeat before a silent connection is dropped (10,000). */
  heartbeatGrace?: number;
  /** Another WebSocket implementation (tests, Node). */
  WebSocket?: typeof WebSocket;
}

/** A publication: the published JSON value (bytes as a Uint8Array) with its topic and offset. */
export interface Publication {
  topic: string;
  offset: string | null;
  data: unknown;
}

export interface PresenceEvent {
  type: "join" | "leave";
  topic: string;
  client: string;
  user: string | null;
  info: unknown;
}

export interface SubscribeOptions {
  /** Resume after this offset (the replay arrives first). */
  since?: string | null;
  onMessage?: (data: unknown, publication: Publication) => void;
  /** Join and leave events, with `presenceEvents: true`. */
  presenceEvents?: boolean;
  onPresence?: (event: PresenceEvent) => void;
  /** After every (re)subscribe: read `recovered` and `wasRecovering` there. */
  onSubscribed?: (subscription: Subscription) => void;
  /** The server refused the subscription (it is not retried). */
  onError?: (error: SyncwsError) => void;
  /** The server removed the subscription (server.unsubscribe). */
  onUnsubscribed?: (reason: string) => void;
}

export interface SubscribeResult {
  recovered: boolean;
  replayed: number;
  offset: string | null;
}

export declare class Subscription {
  readonly client: Client;
  readonly topic: string;
  /** The offset of the last publication received (or of the last answer). */
  offset: string | null;
  /** The last (re)subscribe replayed everything missed. */
  recovered: boolean;
  /** The last (re)subscribe asked for a replay (it had an offset). */
  wasRecovering: boolean;
  replayed: number;
  active: boolean;
  /** The first answer; rejects with a SyncwsError when refused. */
  readonly ready: Promise<SubscribeResult>;
  unsubscribe(): Promise<object>;
}

export interface Session {
  client: string;
  user: string | null;
  info: unknown;
  expires_in: number | null;
  ping: number;
  version: number;
}

export interface Member {
  client: string;
  user: string | null;
  info: unknown;
}

export interface Disconnected {
  code: number | null;
  reason: string;
  willRetry: boolean;
  /** Milliseconds until the next attempt, null when it will not retry. */
  delay: number | null;
}

export interface ClientEvents {
  connecting: CustomEvent<{ attempt: number }>;
  connected: CustomEvent<Session>;
  disconnected: CustomEvent<Disconnected>;
  message: CustomEvent<unknown>;
  error: CustomEvent<unknown>;
}

export declare class Client extends EventTarget {
  constructor(url: string, options?: ClientOptions);
  readonly url: string;
  /** "connecting", "connected", "disconnected" (waiting to retry) or "closed" (for good). */
  readonly state: "connecting" | "connected" | "disconnected" | "closed";
  readonly connected: boolean;
  readonly session: Session | null;
  readonly reconnects: number;
  readonly subscriptions: Map<string, Subscription>;
  subscribe(topic: string, options?: SubscribeOptions): Subscription;
  unsubscribe(topic: string): Promise<object>;
  publish(topic: string, data: unknown, options?: { excludeSelf?: boolean }): Promise<object>;
  rpc<T = unknown>(method: string, params?: unknown, options?: { timeout?: number }): Promise<T>;
  presence(topic: string, options?: { byUser?: boolean }): Promise<Member[]>;
  history(topic: string, options?: { since?: string; limit?: number }): Promise<Publication[]>;
  send(data: unknown): Promise<object>;
  close(): void;
  addEventListener<K extends keyof ClientEvents>(type: K, listener: (event: ClientEvents[K]) => void, options?: boolean | AddEventListenerOptions): void;
  addEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | AddEventListenerOptions): void;
}

export declare function connect(url: string, options?: ClientOptions): Client;

/** An EventSource that resumes by itself and calls onReload when the server says it could not. */
export declare function events(
  url: string,
  options?: {
    onMessage?: (data: string, event: MessageEvent) => void;
    onReload?: () => void;
    EventSource?: typeof EventSource;
  },
): EventSource;
