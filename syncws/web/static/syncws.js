// syncws.js: the browser client of the syncws channels protocol (syncws.v1).
// One ES module, no dependencies, no build step. Types: syncws.d.ts beside it.
// The protocol, with its close codes and back-off: docs/protocol.md.

export const PROTOCOL = "syncws.v1";
const FINAL = [1000, 1002, 1003, 1007, 1009, 1010, 4000, 4001, 4003];

/** Whether to reconnect after a close with `code` (null: dropped without a close frame). */
export function shouldReconnect(code, canRefresh) {
  if (code == null) return true;
  if (code === 4002) return canRefresh;
  return !(FINAL.includes(code) || (code >= 4000 && code <= 4999));
}

/** Milliseconds before attempt `attempt` (0 first): capped exponential, full jitter. */
export function backoffDelay(attempt, base, cap, random = Math.random()) {
  return Math.min(cap, base * 2 ** Math.min(attempt, 32)) * random;
}

/** A failed request: `code` is the protocol's error code, or "timeout", "disconnected", "closed". */
export class SyncwsError extends Error {
  constructor(code, message) {
    super(`${code}: ${message}`);
    this.name = "SyncwsError";
    this.code = code;
  }
}

function decode(message) {
  if (message.encoding !== "base64") return message.data;
  return Uint8Array.from(atob(message.data), (c) => c.charCodeAt(0));
}

export class Subscription {
  constructor(client, topic, options) {
    this.client = client;
    this.topic = topic;
    this.options = options;
    this.offset = options.since ?? null;
    this.recovered = false;
    this.wasRecovering = false;
    this.replayed = 0;
    this.active = true;
    this.heard = false;
    this.ready = new Promise((resolve, reject) => (this._settle = [resolve, reject]));
    this.ready.catch(() => {}); // a refusal is the caller's to see, through ready or onError
  }

  unsubscribe() {
    return this.client.unsubscribe(this.topic);
  }
}

/** A channels connection that reconnects by itself: `new Client(url, {token, getToken})`. */
export class Client extends EventTarget {
  constructor(url, options = {}) {
    super();
    this.url = url;
    this.options = {
      timeout: 10000,
      backoffBase: 500,
      backoffCap: 30000,
      heartbeatGrace: 10000,
      ...options,
    };
    this.state = "connecting";
    this.session = null;
    this.attempt = 0;
    this.reconnects = 0;
    this.subscriptions = new Map();
    this._pending = new Map();
    this._ids = 0;
    this._ws = null;
    this._timer = 0;
    this._silence = 0;
    this._first = true;
    this._wake = () => this._awake();
    if (typeof addEventListener === "function") {
      addEventListener("online", this._wake);
      addEventListener("visibilitychange", this._wake);
    }
    queueMicrotask(() => this._open()); // after the caller added its listeners
  }

  get connected() {
    return this.state === "connected";
  }

  /**
   * Subscribe, now or once connected, and again after every reconnect from the last
   * offset; `ready` resolves with the first answer, rejects when the server refuses.
   */
  subscribe(topic, options = {}) {
    const old = this.subscriptions.get(topic);
    if (old) old.active = false;
    const sub = new Subscription(this, topic, options);
    this.subscriptions.set(topic, sub);
    if (this.state === "connected") this._resubscribe(sub);
    return sub;
  }

  _resubscribe(sub) {
    this._subscribe(sub).then(sub._settle[0], (error) => {
      if (error.code === "disconnected" || error.code === "timeout") return; // the next connection retries
      if (this.subscriptions.get(sub.topic) === sub) this.subscriptions.delete(sub.topic);
      sub.active = false;
      sub._settle[1](error);
      sub.options.onError?.(error);
    });
  }

  unsubscribe(topic) {
    const sub = this.subscriptions.get(topic);
    if (!sub) return Promise.resolve({});
    this.subscriptions.delete(topic);
    sub.active = false;
    return this._request("unsubscribe", { topic });
  }

  publish(topic, data, { excludeSelf = false } = {}) {
    return this._request("publish", { topic, data, exclude_self: excludeSelf });
  }

  rpc(method, params = null, { timeout } = {}) {
    return this._request("rpc", { method, params }, timeout);
  }

  async presence(topic, { byUser = false } = {}) {
    return (await this._request("presence", { topic, by_user: byUser })).members;
  }

  async history(topic, { since, limit } = {}) {
    const result = await this._request("history", { topic, since, limit });
    return result.publications.map((p) => ({ topic, offset: p.offset, data: decode(p) }));
  }

  send(data) {
    return this._request("message", { data });
  }

  close() {
    this._stop(null, "closed by the client");
    this._ws?.close(1000);
  }

  // -- the connection ------------------------------------------------------------------
  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  _open() {
    if (this.state === "closed") return;
    const WS = this.options.WebSocket ?? WebSocket;
    this.state = "connecting";
    this._emit("connecting", { attempt: this.attempt });
    const ws = (this._ws = new WS(this.url, PROTOCOL));
    ws.onopen = () => this._connect(ws);
    ws.onmessage = (event) => this._receive(ws, event.data);
    ws.onclose = (event) => this._lost(ws, event.code === 1005 || event.code === 1006 ? null : event.code, event.reason);
  }

  async _connect(ws) {
    try {
      const { token, getToken } = this.options;
      const fresh = this._first && token != null ? token : getToken ? await getToken() : token;
      if (ws !== this._ws) return;
      const session = await this._request("connect", { token: fresh }, undefined, ws);
      if (ws !== this._ws) return;
      this.session = session;
      this.state = "connected";
      if (!this._first) this.reconnects += 1;
      this._first = false;
      this.attempt = 0;
      this._beat();
      this._emit("connected", session);
      for (const sub of this.subscriptions.values()) this._resubscribe(sub);
    } catch {
      ws.close(); // (a refused connect is closed by the server, with the reason)
    }
  }

  _subscribe(sub) {
    sub.heard = false;
    sub.wasRecovering = sub.offset != null;
    const { presenceEvents = false, onSubscribed } = sub.options;
    const fields = { topic: sub.topic, since: sub.offset ?? undefined, presence_events: presenceEvents };
    return this._request("subscribe", fields).then((result) => {
      sub.recovered = result.recovered;
      sub.replayed = result.replayed;
      if (result.offset != null && !sub.heard) sub.offset = result.offset;
      onSubscribed?.(sub);
      return result;
    });
  }

  _beat() {
    clearTimeout(this._silence);
    const ping = (this.session?.ping ?? 25) * 1000;
    const ws = this._ws;
    this._silence = setTimeout(() => this._lost(ws, null, "heartbeat timeout"), ping + this.options.heartbeatGrace);
  }

  _receive(ws, text) {
    if (ws !== this._ws) return;
    this._beat();
    const message = JSON.parse(text);
    if ("id" in message) {
      const pending = this._pending.get(message.id);
      if (!pending) return;
      this._pending.delete(message.id);
      clearTimeout(pending.timer);
      if (message.error) pending.reject(new SyncwsError(message.error.code, message.error.message));
      else pending.resolve(message.result);
      return;
    }
    const sub = this.subscriptions.get(message.topic);
    switch (message.type) {
      case undefined:
        if (!sub) return;
        sub.heard = true;
        if (message.offset != null) sub.offset = message.offset;
        sub.options.onMessage?.(decode(message), message);
        return;
      case "ping":
        ws.send('{"type":"pong"}');
        return;
      case "join":
      case "leave":
        sub?.options.onPresence?.(message);
        return;
      case "refresh":
        this._refresh();
        return;
      case "unsubscribed":
        if (sub) {
          this.subscriptions.delete(message.topic);
          sub.active = false;
          sub.options.onUnsubscribed?.(message.reason);
        }
        return;
      case "message":
        this._emit("message", message.data);
    }
  }

  async _refresh() {
    const { getToken } = this.options;
    if (!getToken) return; // the server closes with 4002 at expiry
    try {
      await this._request("refresh", { token: await getToken() });
    } catch (error) {
      this._emit("error", error);
    }
  }

  _lost(ws, code, reason) {
    if (ws !== this._ws || this.state === "closed") return;
    this._ws = null;
    ws.onopen = ws.onmessage = ws.onclose = null;
    if (code == null) ws.close(); // a silent or dropped connection: leave it, go on at once
    clearTimeout(this._silence);
    this._fail("disconnected", "the connection was lost", true);
    const retry = shouldReconnect(code, !!this.options.getToken);
    if (!retry) {
      this._stop(code, reason);
      return;
    }
    const delay = backoffDelay(this.attempt++, this.options.backoffBase, this.options.backoffCap);
    this.state = "disconnected";
    this._emit("disconnected", { code, reason, willRetry: true, delay });
    this._retryAt = Date.now() + delay;
    this._timer = setTimeout(() => this._open(), delay);
  }

  _awake() {
    // The page is back, or the network: a client waiting out its back-off tries within a
    // random part of a second (or of backoffBase, when smaller), so many do not storm.
    if (this.state !== "disconnected" || (typeof document === "object" && document.visibilityState === "hidden")) return;
    const soon = Math.random() * Math.min(1000, this.options.backoffBase);
    if (this._retryAt - Date.now() > soon) {
      clearTimeout(this._timer);
      this._retryAt = Date.now() + soon;
      this._timer = setTimeout(() => this._open(), soon);
    }
  }

  _stop(code, reason) {
    if (this.state === "closed") return;
    const was = this.state;
    this.state = "closed";
    clearTimeout(this._timer);
    clearTimeout(this._silence);
    if (typeof removeEventListener === "function") {
      removeEventListener("online", this._wake);
      removeEventListener("visibilitychange", this._wake);
    }
    this._fail("closed", reason || "the client is closed");
    for (const sub of this.subscriptions.values()) sub.active = false;
    if (was !== "closed") this._emit("disconnected", { code, reason, willRetry: false, delay: null });
  }

  _fail(code, message, sentOnly = false) {
    // Requests not sent yet wait for the next connection (until their timeout).
    for (const [id, pending] of this._pending) {
      if (sentOnly && !pending.sent) continue;
      clearTimeout(pending.timer);
      this._pending.delete(id);
      pending.reject(new SyncwsError(code, message));
    }
  }

  _request(type, fields, timeout = this.options.timeout, ws = this._ws) {
    if (this.state === "closed") return Promise.reject(new SyncwsError("closed", "the client is closed"));
    const id = ++this._ids;
    const body = JSON.stringify({ type, id, ...fields });
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._pending.delete(id);
        reject(new SyncwsError("timeout", `no reply to ${type} in ${timeout} ms`));
      }, timeout);
      const pending = { resolve, reject, timer, sent: false };
      this._pending.set(id, pending);
      if (type === "connect" || this.state === "connected") {
        pending.sent = true;
        ws.send(body);
      } else this._queue(id, body);
    });
  }

  _queue(id, body) {
    // Not connected yet: sent once the connection is ready (or failed by the timeout).
    const send = () => {
      this.removeEventListener("connected", send);
      const pending = this._pending.get(id);
      if (pending) {
        pending.sent = true;
        this._ws.send(body);
      }
    };
    this.addEventListener("connected", send);
  }
}

/** `connect(url, options)`: the same as `new Client(url, options)`. */
export function connect(url, options) {
  return new Client(url, options);
}

/**
 * An EventSource that resumes by itself (Last-Event-ID) and calls `onReload` when the
 * server says what was missed is gone (an event named "recovery" with `{"recovered": false}`).
 */
export function events(url, { onMessage, onReload, EventSource: ES = EventSource } = {}) {
  const source = new ES(url);
  if (onMessage) source.onmessage = (event) => onMessage(event.data, event);
  source.addEventListener("recovery", (event) => {
    if (JSON.parse(event.data).recovered === false) onReload?.();
  });
  return source;
}
