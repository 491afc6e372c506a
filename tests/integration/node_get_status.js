// Calls qsc.guardian.v1.GuardianService/GetStatus over mutual TLS the way a Node.js SOAR
// integration would: @grpc/proto-loader reads proto/, @grpc/grpc-js makes the call.
//
//   node node_get_status.js PROTO_ROOT HOST:PORT CA CERT KEY [TLS_MAX_VERSION]
//
// TLS_MAX_VERSION (e.g. TLSv1.2) caps the TLS version the client offers, to check the server's
// TLS 1.3-only rule. Prints one JSON line on stdout: {"ok": true, "response": {...}} or
// {"ok": false, "code": "PERMISSION_DENIED", "details": "..."}. Exit 0 either way; exit 3 when
// the npm modules are missing, 2 on bad usage.
"use strict";

const { grpc, loadDefinition, mtlsCredentials, printJson, usage } = require("./node_common");

function main() {
  const [root, address, ca, cert, key, maxVersion] = process.argv.slice(2);
  if (!key) {
    usage("node node_get_status.js PROTO_ROOT HOST:PORT CA CERT KEY [TLS_MAX_VERSION]");
  }
  const definition = loadDefinition(root, "qsc/guardian/v1/guardian_service.proto");
  const GuardianService = grpc.loadPackageDefinition(definition).qsc.guardian.v1.GuardianService;
  const client = new GuardianService(address, mtlsCredentials(ca, cert, key, maxVersion));
  const deadline = new Date(Date.now() + 10000);
  client.GetStatus({}, { deadline }, (err, response) => {
    const out = err
      ? { ok: false, code: grpc.status[err.code], details: err.details }
      : { ok: true, response };
    printJson(out);
    client.close();
  });
}

main();
