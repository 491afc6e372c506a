// A QSC CortexService client for Node.js (@grpc/grpc-js + @grpc/proto-loader, reading proto/ at
// run time): lists assessments, reads a refusal's reason, and resumes SubscribeAssessments.
//
//   node node_client.js PROTO_DIR CORTEX_ADDR CA CERT KEY FILTER [RESUME_TOKEN]
//
// Prints one JSON object per line. Without RESUME_TOKEN it subscribes with include_existing and
// stops at the end of the snapshot; with one, it prints the first change after that token.
"use strict";

const fs = require("fs");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");
const protobuf = require("protobufjs");

const [protoDir, address, ca, cert, key, filter, resumeToken] = process.argv.slice(2);
const definition = protoLoader.loadSync("qsc/cortex/v1/cortex_service.proto", {
  includeDirs: [protoDir],
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
});
const { CortexService } = grpc.loadPackageDefinition(definition).qsc.cortex.v1;
const credentials = grpc.credentials.createSsl(
  fs.readFileSync(ca),
  fs.readFileSync(key),
  fs.readFileSync(cert),
);
const api = new CortexService(address, credentials);
const print = (object) => console.log(JSON.stringify(object));

// google.rpc.Status and ErrorInfo, enough to read the trailer grpc-status-details-bin.
const rpc = protobuf.Root.fromJSON({
  nested: {
    Any: { fields: { type_url: { type: "string", id: 1 }, value: { type: "bytes", id: 2 } } },
    Status: {
      fields: {
        code: { type: "int32", id: 1 },
        message: { type: "string", id: 2 },
        details: { rule: "repeated", type: "Any", id: 3 },
      },
    },
    ErrorInfo: {
      fields: {
        reason: { type: "string", id: 1 },
        domain: { type: "string", id: 2 },
        metadata: { keyType: "string", type: "string", id: 3 },
      },
    },
  },
});

function errorInfo(error) {
  const raw = error.metadata && error.metadata.get("grpc-status-details-bin")[0];
  if (!raw) return null;
  for (const detail of rpc.lookupType("Status").decode(raw).details) {
    if (detail.type_url === "type.googleapis.com/google.rpc.ErrorInfo") {
      return rpc.lookupType("ErrorInfo").toObject(rpc.lookupType("ErrorInfo").decode(detail.value));
    }
  }
  return null;
}

function listAll(pageToken, done) {
  const call = api.ListAssessments(
    { filter, order_by: "create_time", page_size: 50, page_token: pageToken },
    { deadline: Date.now() + 30000 },
    (error, response) => {
      if (error) throw error;
      for (const a of response.assessments) {
        print({ assessment: a.name, revision: a.revision, state: a.state, title: a.title });
      }
      if (response.next_page_token) listAll(response.next_page_token, done);
      else done(response.total_size);
    },
  );
  call.on("status", (status) => print({ key_exchange: status.metadata.get("qsc-kex-group")[0] }));
}

function subscribe() {
  const stream = api.SubscribeAssessments({
    filter,
    resume_token: resumeToken || "",
    include_existing: !resumeToken,
  });
  stream.on("data", (message) => {
    if (message.change) {
      const { type, assessment, resume_token } = message.change;
      print({ change: type, assessment: assessment.name, revision: assessment.revision, resume_token });
      if (resumeToken) stream.cancel();
    } else if (message.progress.snapshot_complete) {
      print({ snapshot_complete: true, resume_token: message.progress.resume_token });
      if (!resumeToken) stream.cancel();
    }
  });
  stream.on("error", (error) => {
    if (error.code !== grpc.status.CANCELLED) throw error;
    api.close();
  });
}

listAll("", (total) => {
  print({ total });
  api.ListAssessments({ filter: "confidence >>= 1" }, (error) => {
    print({ refused: grpc.status[error.code], error_info: errorInfo(error) });
    subscribe();
  });
});
