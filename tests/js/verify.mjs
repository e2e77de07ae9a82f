// Verifies one captured delivery with the official TypeScript SDK's Receiver.
//
// stdin: JSON {"signature": <Upstash-Signature header>, "body": <raw body as text>, "url": <URL
// the request was delivered to, or null to skip the sub check>}.
// Keys: QSTASH_CURRENT_SIGNING_KEY / QSTASH_NEXT_SIGNING_KEY, or the SDK's dev keys when
// QSTASH_DEV=true (then the keys are left out, as a dev-mode app would).
// Exit 0 only when verify() returned true; 1 on a SignatureError; 2 on anything else.
import { readFileSync } from "node:fs";
import { Receiver, SignatureError } from "@upstash/qstash";

let request;
try {
  request = JSON.parse(readFileSync(0, "utf8"));
} catch (error) {
  console.error(`verify.mjs: stdin is not JSON: ${error}`);
  process.exit(2);
}

const devMode = process.env.QSTASH_DEV === "true" || process.env.QSTASH_DEV === "1";
const receiver = devMode
  ? new Receiver()
  : new Receiver({
      currentSigningKey: process.env.QSTASH_CURRENT_SIGNING_KEY,
      nextSigningKey: process.env.QSTASH_NEXT_SIGNING_KEY,
    });

try {
  const ok = await receiver.verify({
    signature: request.signature,
    body: request.body,
    ...(request.url === null || request.url === undefined ? {} : { url: request.url }),
  });
  console.log(JSON.stringify({ ok }));
  process.exit(ok === true ? 0 : 2);
} catch (error) {
  console.log(JSON.stringify({ ok: false, error: String(error?.message ?? error) }));
  process.exit(error instanceof SignatureError ? 1 : 2);
}
