// A webhook receiver written the way Node receivers of the reference server are: the body is parsed, re-serialised
// with JSON.stringify, and the Standard Webhooks signature is verified over that with svix (the reference's own
// tests do this). Such a receiver accepts a webhook only when the bytes it was sent are exactly what JavaScript
// writes for them: keys in JavaScript's order, numbers as JavaScript prints them.
//
//   WEBHOOK_SECRET=whsec_... node tests/services/webhook-receiver.js    (tests/support/js_receiver.py starts it)
//
// It listens on a free port of 127.0.0.1 and prints {"port": N} once listening, then one JSON line per POST:
// {"path", "id" (the webhook-id header), "signed" (whether a webhook-signature header came), "verified" (svix's
// verdict on the re-serialised body; null when unsigned), "round_trip" (whether JSON.stringify(JSON.parse(body)) is
// the body itself), "first_difference" (the index of the first character where it is not), "type" (the body's
// `type` or `event`), "error" (why parsing or verification failed, else null)}. It answers with that same line: 200
// when there is no error, 401 otherwise. It stops on SIGTERM.
"use strict";

const http = require("node:http");
const { Webhook } = require("svix");

const verifier = new Webhook(process.env.WEBHOOK_SECRET);

function firstDifference(a, b) {
  const length = Math.min(a.length, b.length);
  for (let index = 0; index < length; index += 1) {
    if (a[index] !== b[index]) return index;
  }
  return a.length === b.length ? null : length;
}

function check(request, body) {
  const record = {
    path: request.url,
    id: request.headers["webhook-id"] ?? null,
    signed: "webhook-signature" in request.headers,
    verified: null,
    round_trip: false,
    first_difference: null,
    type: null,
    error: null,
  };
  let payload;
  try {
    const parsed = JSON.parse(body);
    record.type = parsed?.type ?? parsed?.event ?? null;
    payload = JSON.stringify(parsed);
  } catch (error) {
    record.error = `JSON.parse: ${error.message}`;
    return record;
  }
  record.round_trip = payload === body;
  record.first_difference = firstDifference(payload, body);
  if (record.signed) {
    try {
      verifier.verify(payload, request.headers);
      record.verified = true;
    } catch (error) {
      record.verified = false;
      record.error = `verify: ${error.message}`;
    }
  }
  return record;
}

const server = http.createServer((request, response) => {
  const chunks = [];
  request.on("data", (chunk) => chunks.push(chunk));
  request.on("end", () => {
    // Decoded once the whole body is in: a chunk may end inside a multi-byte character.
    const record = check(request, Buffer.concat(chunks).toString("utf8"));
    const line = JSON.stringify(record);
    process.stdout.write(`${line}\n`);
    response.writeHead(record.error === null ? 200 : 401, { "Content-Type": "application/json" }).end(line);
  });
});

server.listen(0, "127.0.0.1", () => {
  process.stdout.write(`${JSON.stringify({ port: server.address().port })}\n`);
});
process.on("SIGTERM", () => server.close(() => process.exit(0)));
