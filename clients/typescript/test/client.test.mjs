// Calls every route of a real server through the typed client. The Rust test
// tests/tests/contract.rs starts the server and sets XENIOS_URL, XENIOS_API_KEY and
// XENIOS_USER_TOKEN (a user's access token signed with the server's JWT secret).
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { createXeniosClient, XeniosError } from "../dist/index.js";

const baseUrl = process.env.XENIOS_URL;
const apiKey = process.env.XENIOS_API_KEY;
const userToken = process.env.XENIOS_USER_TOKEN;
if (!baseUrl || !apiKey || !userToken) {
  throw new Error("set XENIOS_URL, XENIOS_API_KEY and XENIOS_USER_TOKEN (see tests/tests/contract.rs)");
}

const service = createXeniosClient({ baseUrl, apiKey });
const user = createXeniosClient({ baseUrl, apiKey, userToken, requestId: "ts-client-user" });
const ask = (content) => ({ task: "chat", messages: [{ role: "user", content }] });

async function rejects(promise, status, code) {
  await assert.rejects(promise, (e) => {
    assert.ok(e instanceof XeniosError, String(e));
    assert.equal(e.status, status, e.message);
    assert.equal(e.code, code, e.message);
    assert.ok(e.correlationId);
    return true;
  });
}

describe("open probes", () => {
  test("health, live, ready", async () => {
    assert.deepEqual(await service.health(), { status: "healthy" });
    assert.deepEqual(await service.live(), { status: "alive" });
    const ready = await service.ready();
    assert.equal(ready.status, "ready");
    assert.deepEqual(ready.components.map((c) => c.name).sort(), ["postgres", "redis"]);
    for (const c of ready.components) assert.equal("error" in c, false);
  });
});

describe("status, me, metrics", () => {
  test("status", async () => {
    const s = await service.status();
    assert.equal(s.environment, "development");
    assert.equal(s.fake_llm, true);
    assert.equal(typeof s.uptime_secs, "number");
  });

  test("me as the service and as a user", async () => {
    const me = await service.me();
    assert.equal(me.principal, "service");
    assert.equal("user_id" in me, false);
    const u = await user.me();
    assert.equal(u.principal, "user");
    assert.equal(u.email, "coach@example.com");
    assert.equal(u.is_anonymous, false);
    assert.equal(u.correlation_id, "ts-client-user");
  });

  test("metrics", async () => {
    assert.match(await service.metrics(), /xenios_llm_calls_total/);
  });
});

describe("LLM", () => {
  test("complete", async () => {
    const c = await user.complete(ask("hello typed world"));
    assert.ok(c.content.length > 0);
    assert.equal(c.fallback_used, false);
    assert.ok(c.usage.total_tokens > 0);
  });

  test("stream is an async iterator of typed events", async () => {
    const seen = [];
    let done;
    for await (const event of user.stream(ask("one two three"))) {
      if (event.type === "delta") seen.push(event.content);
      else if (event.type === "done") done = event;
      else assert.fail(`error event: ${event.code} ${event.message}`);
    }
    assert.ok(seen.length > 0);
    assert.ok(done, "no done event");
    assert.equal(typeof done.model_used, "string");
    assert.ok(done.usage.total_tokens > 0);
  });

  test("leaving the loop early closes the stream", async () => {
    for await (const event of user.stream(ask("a b c d e f"))) {
      assert.equal(event.type, "delta");
      break;
    }
  });

  test("OpenAI-compatible chat completions", async () => {
    const c = await service.chatCompletions({
      model: "chat",
      messages: [{ role: "user", content: "hello" }],
    });
    assert.equal(c.object, "chat.completion");
    assert.equal(c.choices[0].message.role, "assistant");
  });

  test("errors: 401, 403, 422", async () => {
    const nobody = createXeniosClient({ baseUrl, apiKey: "wrong-key" });
    await rejects(nobody.status(), 401, "invalid_api_key");
    await rejects(nobody.complete(ask("x")), 401, "invalid_api_key");
    await rejects(
      user.complete({ ...ask("x"), models: ["anthropic/claude-sonnet-4.5"] }),
      403,
      "model_choice_forbidden",
    );
    await rejects(user.complete({ ...ask("x"), temperature: 9 }), 422, "validation_error");
    await rejects(
      (async () => {
        for await (const _ of user.stream({ task: "chat", messages: [] })) break;
      })(),
      422,
      "validation_error",
    );
  });
});

describe("jobs", () => {
  test("enqueue, read, revoke", async () => {
    const job = await service.enqueue({ task: "xenios.echo", args: [1, "a"], kwargs: {} });
    assert.equal(job.state, "PENDING");
    assert.equal(job.queue, "default");
    const read = await service.job(job.id);
    assert.equal(read.id, job.id);
    assert.ok(["PENDING", "STARTED", "SUCCESS"].includes(read.state));
    const revoked = await service.revoke(job.id, { terminate: true });
    assert.deepEqual(revoked, { id: job.id, revoked: true, terminate: true });
  });

  test("errors: 404 for a user, 422 for a bad task", async () => {
    const job = await service.enqueue({ task: "xenios.echo" });
    await rejects(user.job(job.id), 404, "not_found");
    await rejects(user.revoke(job.id), 404, "not_found");
    await rejects(service.enqueue({ task: "no.such.task" }), 422, "unknown_task");
    await rejects(service.job("bad id"), 422, "validation_error");
  });
});
