// Unit tests of syncws.js in Node's built-in runner (node --test tests/js), against a fake
// WebSocket that records what the client sends and lets a test answer, push and drop.
import assert from "node:assert/strict";
import { test } from "node:test";

import { Client, SyncwsError, backoffDelay, shouldReconnect } from "../../syncws/web/static/syncws.js";

class FakeSocket {
  static all = [];
  constructor(url, protocol) {
    this.url = url;
    this.protocol = protocol;
    this.sent = [];
    this.closedWith = undefined;
    FakeSocket.all.push(this);
    setTimeout(() => this.onopen?.(), 0);
  }
  send(text) {
    this.sent.push(JSON.parse(text));
  }
  close(code) {
    this.closedWith = code ?? null;
  }
  push(message) {
    this.onmessage?.({ data: JSON.stringify(message) });
  }
  drop(code = 1006, reason = "") {
    this.onclose?.({ code, reason });
  }
  /** Wait for the client to send a request of `type`; answer it with `result`. */
  async answer(type, result) {
    const request = await until(() => this.sent.find((m) => m.type === type && !m.answered));
    request.answered = true;
    this.push({ id: request.id, result });
    return request;
  }
}

const tick = () => new Promise((resolve) => setTimeout(resolve, 1));
async function until(predicate, ms = 2000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = predicate();
    if (value) return value;
    if (Date.now() > deadline) throw new Error("timed out waiting");
    await tick();
  }
}
const SESSION = { client: "c1", user: "ann", info: null, expires_in: null, ping: 25, version: 1 };

function client(options = {}) {
  FakeSocket.all = [];
  return new Client("ws://x/_syncws", { WebSocket: FakeSocket, backoffBase: 5, backoffCap: 20, ...options });
}

async function connected(c, session = SESSION) {
  const ws = await until(() => FakeSocket.all.at(-1));
  await ws.answer("connect", session);
  await until(() => c.state === "connected");
  return ws;
}

test("back-off is full jitter under a capped exponential", () => {
  assert.equal(backoffDelay(0, 500, 30000, 0.5), 250);
  assert.equal(backoffDelay(3, 500, 30000, 0.999), 500 * 8 * 0.999);
  assert.equal(backoffDelay(100, 500, 30000, 0.5), 15000);
  for (let n = 0; n < 50; n++) assert.ok(backoffDelay(n, 500, 30000) < 30000);
});

test("the close-code table matches the protocol's", () => {
  for (const code of [null, 1001, 1006, 1008, 1011, 1012, 1013]) assert.equal(shouldReconnect(code, false), true, code);
  for (const code of [1000, 1002, 1007, 1009, 4000, 4001, 4003, 4100]) assert.equal(shouldReconnect(code, true), false, code);
  assert.equal(shouldReconnect(4002, true), true);
  assert.equal(shouldReconnect(4002, false), false);
});

test("connects with the subprotocol and the token first, then sends what waited", async () => {
  const c = client({ token: "t0" });
  const events = [];
  c.addEventListener("connected", (e) => events.push(e.detail.user));
  const sub = c.subscribe("news");
  const ws = await until(() => FakeSocket.all[0]);
  assert.equal(ws.protocol, "syncws.v1");
  await ws.answer("connect", SESSION);
  assert.equal(ws.sent[0].type, "connect");
  assert.equal(ws.sent[0].token, "t0");
  const request = await ws.answer("subscribe", { recovered: false, replayed: 0, offset: "7-1" });
  assert.equal(request.topic, "news");
  assert.equal(request.since, undefined);
  assert.deepEqual(await sub.ready, { recovered: false, replayed: 0, offset: "7-1" });
  assert.deepEqual(events, ["ann"]);
  c.close();
});

test("publications keep the offset; a reconnect resubscribes from it and says how it went", async () => {
  const got = [];
  const states = [];
  const c = client();
  c.addEventListener("disconnected", (e) => states.push(e.detail));
  const sub = c.subscribe("feed", { onMessage: (data, p) => got.push([data, p.offset]) });
  let ws = await connected(c);
  await ws.answer("subscribe", { recovered: false, replayed: 0, offset: null });
  ws.push({ topic: "feed", offset: "9-1", data: { n: 1 } });
  ws.push({ topic: "feed", offset: "9-2", data: "AAEC", encoding: "base64" });
  assert.deepEqual(got[0], [{ n: 1 }, "9-1"]);
  assert.deepEqual([...got[1][0]], [0, 1, 2]);
  assert.equal(sub.offset, "9-2");
  ws.drop(1006);
  assert.equal(states[0].willRetry, true);
  assert.ok(states[0].delay <= 5);
  assert.equal(c.state, "disconnected");
  ws = await until(() => FakeSocket.all.length === 2 && FakeSocket.all[1]);
  await ws.answer("connect", SESSION);
  ws.push({ topic: "feed", offset: "9-3", data: 3 }); // the replay comes before the answer
  const again = await ws.answer("subscribe", { recovered: true, replayed: 1, offset: "9-2" });
  assert.equal(again.since, "9-2");
  await until(() => sub.recovered);
  assert.equal(sub.wasRecovering, true);
  assert.equal(sub.offset, "9-3"); // the answer's older offset does not win
  assert.equal(c.reconnects, 1);
  c.close();
});

test("a final close code stops the client; 4002 retries only with getToken", async () => {
  for (const [code, getToken, retries] of [
    [4001, undefined, false],
    [4003, () => "t", false],
    [4002, undefined, false],
    [4002, () => "t", true],
    [1012, undefined, true],
  ]) {
    const c = client({ getToken });
    const ws = await connected(c);
    const seen = [];
    c.addEventListener("disconnected", (e) => seen.push(e.detail));
    ws.drop(code, "why");
    assert.equal(seen[0].willRetry, retries, `${code}`);
    assert.equal(seen[0].code, code);
    assert.equal(c.state, retries ? "disconnected" : "closed");
    c.close();
  }
});

test("rpc results, errors, timeouts and a lost connection", async () => {
  const c = client();
  const ws = await connected(c);
  const sum = c.rpc("add", [1, 2]);
  await ws.answer("rpc", 3);
  assert.equal(await sum, 3);
  const failing = c.rpc("nope");
  const request = await until(() => ws.sent.find((m) => m.type === "rpc" && m.method === "nope"));
  ws.push({ id: request.id, error: { code: "not_found", message: "no RPC method 'nope'" } });
  await assert.rejects(failing, (e) => e instanceof SyncwsError && e.code === "not_found");
  await assert.rejects(c.rpc("slow", null, { timeout: 10 }), (e) => e.code === "timeout");
  const lost = c.rpc("slow");
  ws.drop(1006);
  await assert.rejects(lost, (e) => e.code === "disconnected");
  c.close();
  await assert.rejects(c.rpc("any"), (e) => e.code === "closed");
});

test("a refused subscription rejects ready, calls onError and is not retried", async () => {
  const errors = [];
  const c = client();
  const sub = c.subscribe("secret", { onError: (e) => errors.push(e.code) });
  const ws = await connected(c);
  const request = await until(() => ws.sent.find((m) => m.type === "subscribe"));
  ws.push({ id: request.id, error: { code: "forbidden", message: "members only" } });
  await assert.rejects(sub.ready, (e) => e.code === "forbidden");
  assert.deepEqual(errors, ["forbidden"]);
  assert.equal(c.subscriptions.size, 0);
  c.close();
});

test("the server's refresh request gets a new token from getToken", async () => {
  let n = 0;
  const c = client({ token: "t0", getToken: () => `t${++n}` });
  const ws = await connected(c);
  ws.push({ type: "refresh" });
  const request = await ws.answer("refresh", { expires_in: 60 });
  assert.equal(request.token, "t1");
  ws.push({ type: "ping" });
  assert.deepEqual(ws.sent.at(-1), { type: "pong" });
  c.close();
});

test("a silent server is dropped after the heartbeat and its grace", async () => {
  const c = client({ heartbeatGrace: 20 });
  const ws = await connected(c, { ...SESSION, ping: 0.01 });
  const seen = [];
  c.addEventListener("disconnected", (e) => seen.push(e.detail));
  await until(() => seen.length === 1);
  assert.equal(seen[0].reason, "heartbeat timeout");
  assert.equal(ws.closedWith, null);
  await until(() => FakeSocket.all.length === 2);
  c.close();
});

test("listeners added right after construction see the first connecting; close() before it opens nothing", async () => {
  const c = client();
  const seen = [];
  c.addEventListener("connecting", (e) => seen.push(e.detail.attempt));
  await connected(c);
  assert.deepEqual(seen, [0]);
  c.close();
  const quiet = client();
  quiet.close();
  await tick();
  assert.equal(FakeSocket.all.length, 0);
  assert.equal(quiet.state, "closed");
});
