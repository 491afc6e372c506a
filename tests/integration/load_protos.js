// Loads every .proto below a proto root the way a Node.js SOAR integration would
// (@grpc/proto-loader + @grpc/grpc-js) and prints what it found as JSON on stdout.
//
//   node load_protos.js PROTO_ROOT < requests.json
//
// stdin (optional, may be empty) is JSON: {"decode": [{"method": "/pkg.Service/Rpc",
// "response": "<base64 of one serialized response message>"}]}. Each is decoded with the method's
// own deserializer, then encoded again, so the caller can check the wire format crosses languages.
//
// stdout: {"files": [...], "services": {"pkg.Service": {"Rpc": {path, requestStream, ...}}},
//          "warnings": [...], "decoded": [{method, object, reencoded}]}
// Exit 3 with a message on stderr when the npm modules are missing.
"use strict";

const fs = require("fs");
const path = require("path");
const { grpc, loadDefinition, usage } = require("./node_common");

const warnings = [];
process.on("warning", (warning) => warnings.push(`${warning.name}: ${warning.message}`));

function protoFiles(root) {
  const found = [];
  const walk = (dir) => {
    for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
      const full = path.join(dir, entry.name);
      if (entry.isDirectory()) walk(full);
      else if (entry.name.endsWith(".proto")) found.push(path.relative(root, full));
    }
  };
  walk(root);
  return found.sort();
}

// Service client constructors are functions carrying a `service` definition; walk the loaded
// package tree the way a user of grpc.loadPackageDefinition would reach them.
function collectServices(node, prefix, out) {
  for (const [key, value] of Object.entries(node)) {
    const name = prefix ? `${prefix}.${key}` : key;
    if (typeof value === "function" && value.service) {
      const methods = {};
      for (const [rpc, def] of Object.entries(value.service)) {
        methods[rpc] = {
          path: def.path,
          requestStream: def.requestStream,
          responseStream: def.responseStream,
          requestType: def.requestType && def.requestType.type ? def.requestType.type.name : null,
          responseType:
            def.responseType && def.responseType.type ? def.responseType.type.name : null,
        };
      }
      out[name] = methods;
    } else if (value && typeof value === "object" && !value.format) {
      collectServices(value, name, out);
    }
  }
  return out;
}

function main() {
  const root = process.argv[2];
  if (!root) {
    usage("node load_protos.js PROTO_ROOT < requests.json");
  }
  const input = fs.readFileSync(0, "utf8").trim();
  const requests = input ? JSON.parse(input) : {};
  const files = protoFiles(root);
  const packageDefinition = loadDefinition(root, files, { bytes: String });
  const loaded = grpc.loadPackageDefinition(packageDefinition);
  const services = collectServices(loaded, "", {});

  const byPath = {};
  for (const [serviceName, methods] of Object.entries(services)) {
    for (const rpc of Object.keys(methods)) {
      byPath[methods[rpc].path] = packageDefinition[serviceName][rpc];
    }
  }
  const decoded = (requests.decode || []).map(({ method, response }) => {
    const def = byPath[method];
    if (!def) throw new Error(`no method ${method}`);
    const object = def.responseDeserialize(Buffer.from(response, "base64"));
    const reencoded = def.responseSerialize(object).toString("base64");
    return { method, object, reencoded };
  });

  // Warnings are emitted on the next tick: report after they have arrived.
  setImmediate(() => {
    process.stdout.write(JSON.stringify({ files, services, warnings, decoded }));
  });
}

main();
