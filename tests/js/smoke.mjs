// Smoke test of the official TypeScript SDK (@upstash/qstash) against jobsvc's local QStash
// server. Run by tests/integration/test_typescript_sdk.py, which checks what the receiver got.
//
// Environment: QSTASH_URL, QSTASH_TOKEN, QSTASH_CURRENT_SIGNING_KEY, QSTASH_NEXT_SIGNING_KEY,
// RECEIVER_URL (a local HTTP receiver), DLQ_MESSAGE_ID (a message the test already put in the DLQ).
// Prints one JSON line with what each SDK call returned; exits 1 naming the step that failed.
import { Client } from "@upstash/qstash";

const names = [
  "QSTASH_URL",
  "QSTASH_TOKEN",
  "QSTASH_CURRENT_SIGNING_KEY",
  "QSTASH_NEXT_SIGNING_KEY",
  "RECEIVER_URL",
];
const missing = names.filter((name) => !process.env[name]);
if (missing.length > 0) {
  console.error(`smoke.mjs: missing environment variables: ${missing.join(", ")}`);
  process.exit(2);
}
const rx = process.env.RECEIVER_URL.replace(/\/$/, "");
// No client-side retries: a failing call must fail once, with the server's own answer.
const client = new Client({
  baseUrl: process.env.QSTASH_URL,
  token: process.env.QSTASH_TOKEN,
  retry: false,
});

let current = "start";
const step = async (name, fn) => {
  current = name;
  return await fn();
};
const out = {};

try {
  out.publish = await step("publishJSON", () =>
    client.publishJSON({
      url: `${rx}/js`,
      body: { hello: "from js", n: 1 },
      headers: { "X-Smoke": "js" },
      retries: 1,
    }),
  );

  out.batch = await step("batchJSON", () =>
    client.batchJSON([
      { url: `${rx}/js-batch`, body: { i: 0 } },
      { url: `${rx}/js-batch`, body: { i: 1 } },
    ]),
  );

  // A message a day away (scaled, still far): get it while pending, then cancel it.
  const delayed = await step("publishJSON delayed", () =>
    client.publishJSON({ url: `${rx}/js-delayed`, body: { late: true }, delay: "1d" }),
  );
  const pending = await step("messages.get", () => client.messages.get(delayed.messageId));
  out.delayed = {
    messageId: delayed.messageId,
    get: {
      messageId: pending.messageId,
      url: pending.url,
      method: pending.method,
      body: pending.body,
      notBefore: pending.notBefore,
      createdAt: pending.createdAt,
    },
  };
  out.delayed.cancel = await step("messages.cancel", () =>
    client.messages.cancel(delayed.messageId),
  );
  out.delayed.logStates = await step("logs", async () => {
    const { logs } = await client.logs({ filter: { messageId: delayed.messageId } });
    return logs.map((log) => log.state);
  });

  // Schedules: create, get, list, pause, resume, delete, list again.
  const created = await step("schedules.create", () =>
    client.schedules.create({
      destination: `${rx}/js-schedule`,
      cron: "0 0 1 1 *",
      body: JSON.stringify({ scheduled: true }),
      headers: { "Content-Type": "application/json" },
      retries: 2,
    }),
  );
  const scheduleId = created.scheduleId;
  const got = await step("schedules.get", () => client.schedules.get(scheduleId));
  const listedBefore = await step("schedules.list", () => client.schedules.list());
  await step("schedules.pause", () => client.schedules.pause({ schedule: scheduleId }));
  const paused = await step("schedules.get paused", () => client.schedules.get(scheduleId));
  await step("schedules.resume", () => client.schedules.resume({ schedule: scheduleId }));
  const resumed = await step("schedules.get resumed", () => client.schedules.get(scheduleId));
  await step("schedules.delete", () => client.schedules.delete(scheduleId));
  const listedAfter = await step("schedules.list after delete", () => client.schedules.list());
  out.schedule = {
    scheduleId,
    get: {
      scheduleId: got.scheduleId,
      cron: got.cron,
      destination: got.destination,
      retries: got.retries,
      isPaused: got.isPaused,
    },
    listedBefore: listedBefore.map((s) => s.scheduleId),
    pausedIsPaused: paused.isPaused,
    resumedIsPaused: resumed.isPaused,
    listedAfter: listedAfter.map((s) => s.scheduleId),
  };

  // Queues.
  const queue = client.queue({ queueName: "js-queue" });
  await step("queue.upsert", () => queue.upsert({ parallelism: 2 }));
  const queueInfo = await step("queue.get", () => queue.get());
  const enqueued = await step("queue.enqueueJSON", () =>
    queue.enqueueJSON({ url: `${rx}/js-queue`, body: { queued: true } }),
  );
  const queues = await step("queue.list", () => queue.list());
  out.queue = {
    get: { name: queueInfo.name, parallelism: queueInfo.parallelism, paused: queueInfo.paused },
    enqueued,
    listed: queues.map((q) => q.name),
  };

  // URL groups.
  await step("urlGroups.addEndpoints", () =>
    client.urlGroups.addEndpoints({
      name: "js-group",
      endpoints: [
        { name: "a", url: `${rx}/js-group-a` },
        { name: "b", url: `${rx}/js-group-b` },
      ],
    }),
  );
  const group = await step("urlGroups.get", () => client.urlGroups.get("js-group"));
  const fanout = await step("publishJSON urlGroup", () =>
    client.publishJSON({ urlGroup: "js-group", body: { fanout: true } }),
  );
  const groups = await step("urlGroups.list", () => client.urlGroups.list());
  out.urlGroup = {
    get: { name: group.name, endpoints: group.endpoints },
    published: fanout,
    listed: groups.map((g) => g.name),
  };

  // The DLQ (the Python test put one message there before starting this script).
  out.dlq = await step("dlq.listMessages", async () => {
    const { messages, cursor } = await client.dlq.listMessages();
    return {
      cursor: cursor ?? null,
      messages: messages.map((m) => ({
        dlqId: m.dlqId,
        messageId: m.messageId,
        url: m.url,
        responseStatus: m.responseStatus,
        responseBody: m.responseBody,
      })),
    };
  });
} catch (error) {
  console.error(`smoke.mjs: step "${current}" failed: ${error?.stack ?? error}`);
  process.exit(1);
}

console.log(JSON.stringify(out));
