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

const fs = require("fs");
const path = require("path");
const tls = require("tls");

function requireTool(name) {
  try {
    return require(name);
  } catch (err) {
    process.stderr.write(
      `cannot load ${name} (${err.code || err.message}); ` +
        "install the Node.js tools with `npm ci --prefix tools/npm` (or run `make test`)\n",
    );
    process.exit(3);
  }
}

const protoLoader = requireTool("@grpc/proto-loader");
const grpc = requireTool("@grpc/grpc-js");

function main() {
  const [root, address, ca, cert, key, maxVersion] = process.argv.slice(2);
  if (!key) {
    process.stderr.write(
      "usage: node node_get_status.js PROTO_ROOT HOST:PORT CA CERT KEY [TLS_MAX_VERSION]\n",
    );
    process.exit(2);
  }
  const definition = protoLoader.loadSync("qsc/guardian/v1/guardian_service.proto", {
    includeDirs: [root],
    keepCase: true,
    longs: String,
    enums: String,
    defaults: false,
    oneofs: true,
  });
  const GuardianService = grpc.loadPackageDefinition(definition).qsc.guardian.v1.GuardianService;
  const [caPem, certPem, keyPem] = [ca, cert, key].map((p) => fs.readFileSync(path.resolve(p)));
  const credentials = maxVersion
    ? grpc.credentials.createFromSecureContext(
        tls.createSecureContext({ ca: caPem, cert: certPem, key: keyPem, maxVersion }),
      )
    : grpc.credentials.createSsl(caPem, keyPem, certPem);
  const client = new GuardianService(address, credentials);
  const deadline = new Date(Date.now() + 10000);
  client.GetStatus({}, { deadline }, (err, response) => {
    const out = err
      ? { ok: false, code: grpc.status[err.code], details: err.details }
      : { ok: true, response };
    process.stdout.write(JSON.stringify(out) + "\n");
    client.close();
  });
}

main();
