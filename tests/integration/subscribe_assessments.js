// Follows qsc.cortex.v1.CortexService/SubscribeAssessments over mutual TLS the way a Node.js SOAR
// integration would (@grpc/proto-loader reads proto/, @grpc/grpc-js makes the calls), driven one
// command a line on stdin so a test can disconnect it, resume it and have it judge:
//
//   node subscribe_assessments.js PROTO_ROOT GOOGLE_PROTO_ROOT HOST:PORT CA CERT KEY [LIFETIME_MS]
//
// Commands (stdin):
//   subscribe                  a new call with include_existing
//   resume [TOKEN]             a new call resuming after TOKEN; without one, after the
//                              resume_token of the last change this client received
//   cancel CALL                cancel call CALL (a client-side disconnect)
//   verdict NAME VERDICT [COMMENT...]   SubmitVerdict (VERDICT e.g. VERDICT_BENIGN)
//   exit                       cancel every call, close the client, exit 0 (so does EOF)
//
// Every subscription asks for a heartbeat every 200 ms. Prints one JSON line per thing seen:
//   {"type": "subscribed", "call": N, "resume_token": "..." or ""}
//   {"type": "change", "call": N, "change_type": "CHANGE_TYPE_CREATED", "name": "assessments/..",
//    "revision": 1, "state": "ASSESSMENT_STATE_OPEN", "verdict": null or
//    {"verdict": "...", "actor": "spiffe://...", "comment": "..."}, "resume_token": "..."}
//   {"type": "progress", "call": N, "resume_token": "...", "snapshot_complete": false}
//   {"type": "error", "call": N, "code": "INVALID_ARGUMENT", "details": "...", "reason": "...",
//    "domain": "...", "metadata": {...}}          (a cancelled call ends with code CANCELLED)
//   {"type": "end", "call": N}                    (the server ended the stream: never expected)
//   {"type": "verdict", "ok": true, "name": "...", "revision": 2, "state": "...", "actor": "..."}
//    or {"type": "verdict", "ok": false, "code": ..., "reason": ...}
// Exits 4 after LIFETIME_MS (default 120000) whatever happens, so it never outlives a test; 3
// when the npm modules are missing, 2 on bad usage or an unknown command.
"use strict";

const readline = require("readline");
const { errorInfo, grpc, loadDefinition, mtlsCredentials, printJson, usage } = require(
  "./node_common",
);

const HEARTBEAT = { seconds: 0, nanos: 200 * 1000 * 1000 };
const VERDICT_DEADLINE_MS = 20000;

function assessmentFields(a) {
  const v = a.verdict;
  const verdict = v
    ? { verdict: v.verdict || null, actor: v.actor || "", comment: v.comment || "" }
    : null;
  return {
    name: a.name,
    revision: Number(a.revision || 0),
    state: a.state || "ASSESSMENT_STATE_UNSPECIFIED",
    verdict,
  };
}

function refusal(googleRoot, err) {
  const info = errorInfo(googleRoot, err.metadata) || {};
  return {
    code: grpc.status[err.code],
    details: err.details,
    reason: info.reason || null,
    domain: info.domain || null,
    metadata: info.metadata || {},
  };
}

function main() {
  const [root, googleRoot, address, ca, cert, key, lifetime] = process.argv.slice(2);
  if (!key) {
    usage(
      "node subscribe_assessments.js PROTO_ROOT GOOGLE_PROTO_ROOT HOST:PORT CA CERT KEY " +
        "[LIFETIME_MS]",
    );
  }
  setTimeout(() => {
    process.stderr.write("lifetime exceeded\n");
    process.exit(4);
  }, Number(lifetime || 120000)).unref();

  const definition = loadDefinition(root, "qsc/cortex/v1/cortex_service.proto");
  const CortexService = grpc.loadPackageDefinition(definition).qsc.cortex.v1.CortexService;
  const client = new CortexService(address, mtlsCredentials(ca, cert, key));
  const calls = new Map(); // call number -> the open call
  let counter = 0;
  let lastToken = ""; // resume_token of the last change received, on any call

  const subscribe = (request) => {
    counter += 1;
    const n = counter;
    const call = client.SubscribeAssessments({ ...request, heartbeat_interval: HEARTBEAT });
    calls.set(n, call);
    printJson({ type: "subscribed", call: n, resume_token: request.resume_token || "" });
    call.on("data", (message) => {
      if (message.payload === "change") {
        const change = message.change;
        lastToken = change.resume_token;
        printJson({
          type: "change",
          call: n,
          change_type: change.type,
          ...assessmentFields(change.assessment),
          resume_token: change.resume_token,
        });
      } else {
        const progress = message.progress;
        printJson({
          type: "progress",
          call: n,
          resume_token: progress.resume_token,
          snapshot_complete: Boolean(progress.snapshot_complete),
        });
      }
    });
    call.on("error", (err) => {
      calls.delete(n);
      printJson({ type: "error", call: n, ...refusal(googleRoot, err) });
    });
    call.on("end", () => {
      if (calls.delete(n)) {
        printJson({ type: "end", call: n });
      }
    });
  };

  const verdict = (name, value, comment) => {
    const deadline = new Date(Date.now() + VERDICT_DEADLINE_MS);
    client.SubmitVerdict({ name, verdict: value, comment }, { deadline }, (err, response) => {
      if (err) {
        printJson({ type: "verdict", ok: false, name, ...refusal(googleRoot, err) });
        return;
      }
      const a = assessmentFields(response.assessment);
      printJson({ type: "verdict", ok: true, ...a, actor: a.verdict ? a.verdict.actor : "" });
    });
  };

  const shutdown = () => {
    for (const call of calls.values()) {
      call.cancel();
    }
    client.close();
    process.exit(0);
  };

  const lines = readline.createInterface({ input: process.stdin });
  lines.on("line", (line) => {
    const [command, ...args] = line.trim().split(/\s+/);
    if (command === "subscribe") {
      subscribe({ include_existing: true });
    } else if (command === "resume") {
      subscribe({ resume_token: args[0] || lastToken });
    } else if (command === "cancel") {
      const call = calls.get(Number(args[0]));
      if (call) {
        call.cancel(); // its "error" handler prints the CANCELLED status
      } else {
        printJson({ type: "error", call: Number(args[0]), code: "NO_SUCH_CALL" });
      }
    } else if (command === "verdict") {
      verdict(args[0], args[1], args.slice(2).join(" "));
    } else if (command === "exit") {
      shutdown();
    } else if (command) {
      process.stderr.write(`unknown command: ${line}\n`);
      process.exit(2);
    }
  });
  lines.on("close", shutdown);
}

main();
