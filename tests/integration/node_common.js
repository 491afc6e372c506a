// What the Node.js clients of these tests share (load_protos.js, node_get_status.js,
// node_list_events.js): loading the npm modules, reading protos with @grpc/proto-loader the way
// a Node.js SOAR integration would, and the mutual TLS credentials of @grpc/grpc-js.
//
//   const { grpc, protoLoader, requireTool, ... } = require("./node_common");
//
// Requiring it exits 3 with a message on stderr when @grpc/proto-loader or @grpc/grpc-js is
// missing.
"use strict";

const fs = require("fs");
const path = require("path");
const tls = require("tls");

// An npm module, or exit 3 with how to install the Node.js tools.
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

// How every client here reads the protos: field names as written, 64-bit integers and enums as
// strings, no defaults filled in, the set member of a oneof named.
const LOADER_OPTIONS = {
  keepCase: true,
  longs: String,
  enums: String,
  defaults: false,
  oneofs: true,
};

// The package definition of `files` (relative to `root`), with LOADER_OPTIONS and `extra`.
function loadDefinition(root, files, extra = {}) {
  return protoLoader.loadSync(files, { includeDirs: [root], ...LOADER_OPTIONS, ...extra });
}

// Exit 2 with the usage line on stderr.
function usage(text) {
  process.stderr.write(`usage: ${text}\n`);
  process.exit(2);
}

// Channel credentials presenting CERT/KEY and trusting CA (file paths); `maxVersion` (e.g.
// "TLSv1.2") caps the TLS version offered.
function mtlsCredentials(ca, cert, key, maxVersion) {
  const [caPem, certPem, keyPem] = [ca, cert, key].map((p) => fs.readFileSync(path.resolve(p)));
  return maxVersion
    ? grpc.credentials.createFromSecureContext(
        tls.createSecureContext({ ca: caPem, cert: certPem, key: keyPem, maxVersion }),
      )
    : grpc.credentials.createSsl(caPem, keyPem, certPem);
}

// Print one JSON line on stdout.
function printJson(out) {
  process.stdout.write(JSON.stringify(out) + "\n");
}

// The google.rpc.ErrorInfo (as a plain object) of a refusal's google.rpc.Status, read from the
// trailer grpc-status-details-bin of `metadata`; null when there is none. GOOGLE_ROOT (googleRoot) holds
// google/rpc/status.proto and error_details.proto. protobufjs is loaded on first use only.
function errorInfo(googleRoot, metadata) {
  const raw = metadata && metadata.get("grpc-status-details-bin");
  if (!raw || raw.length === 0) {
    return null;
  }
  const protobuf = requireTool("protobufjs");
  const root = new protobuf.Root();
  root.resolvePath = (_origin, target) => path.join(googleRoot, target);
  root.loadSync(["google/rpc/status.proto", "google/rpc/error_details.proto"]);
  const Status = root.lookupType("google.rpc.Status");
  const ErrorInfo = root.lookupType("google.rpc.ErrorInfo");
  const status = Status.decode(raw[0]);
  for (const detail of status.details) {
    if (detail.type_url === "type.googleapis.com/google.rpc.ErrorInfo") {
      return ErrorInfo.toObject(ErrorInfo.decode(detail.value));
    }
  }
  return null;
}

module.exports = {
  LOADER_OPTIONS,
  errorInfo,
  grpc,
  loadDefinition,
  mtlsCredentials,
  printJson,
  protoLoader,
  requireTool,
  usage,
};
