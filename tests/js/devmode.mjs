// The TypeScript SDK's dev mode adopting jobsvc's local QStash server.
//
// With QSTASH_DEV=true the SDK ignores configured credentials, targets
// http://127.0.0.1:$QSTASH_DEV_PORT with the public dev token, and first asks GET /v2/keys
// whether a dev server with the dev keys already runs there; only if not does it download and
// spawn the qstash-cli binary. That download is blocked below, so this script can only pass by
// adopting the server under test.
//
// Environment: QSTASH_DEV=true, QSTASH_DEV_PORT, RECEIVER_URL.
// Prints one JSON line (the last line of stdout) with the publish result.
import https from "node:https";
import { syncBuiltinESMExports } from "node:module";
import { Client } from "@upstash/qstash";

const refuse = () => {
  throw new Error("devmode.mjs: the SDK tried to download the dev server binary");
};
https.get = refuse;
https.request = refuse;
syncBuiltinESMExports(); // the SDK imports node:https lazily, and sees these

if (process.env.QSTASH_DEV !== "true" || !process.env.QSTASH_DEV_PORT) {
  console.error("devmode.mjs: set QSTASH_DEV=true and QSTASH_DEV_PORT");
  process.exit(2);
}
const rx = process.env.RECEIVER_URL.replace(/\/$/, "");

try {
  // No baseUrl, no token: dev mode supplies both.
  const client = new Client({ retry: false });
  const published = await client.publishJSON({ url: `${rx}/js-dev`, body: { dev: true } });
  console.log(JSON.stringify({ publish: published }));
} catch (error) {
  console.error(`devmode.mjs: ${error?.stack ?? error}`);
  process.exit(1);
}
