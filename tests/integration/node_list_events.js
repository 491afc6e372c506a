// Pages through qsc.cortex.v1.CortexService/ListEvents over mutual TLS the way a Node.js SOAR
// integration would: @grpc/proto-loader reads proto/, @grpc/grpc-js makes the calls, and a
// refusal's google.rpc.Status (trailer grpc-status-details-bin) is decoded to its ErrorInfo.
//
//   node node_list_events.js PROTO_ROOT GOOGLE_PROTO_ROOT HOST:PORT CA CERT KEY REQUEST_JSON
//
// REQUEST_JSON: {"page_size": 500, "filter": "...", "order_by": "time desc",
//                "page_token": "<start from this token>", "max_pages": 100}
// GOOGLE_PROTO_ROOT holds google/rpc/status.proto and error_details.proto.
// Prints one JSON line: {"ok": true, "pages": N, "total_size": T, "events": [[id, guardian, seq],
// ...], "last_token": "..."} or {"ok": false, "code": "INVALID_ARGUMENT", "details": "...",
// "reason": "...", "domain": "...", "metadata": {...}, "pages": N}. Exit 0 either way; 3 when the
// npm modules are missing, 2 on bad usage.
"use strict";

const {
  errorInfo,
  grpc,
  loadDefinition,
  mtlsCredentials,
  printJson,
  usage,
} = require("./node_common");

function main() {
  const [root, googleRoot, address, ca, cert, key, requestJson] = process.argv.slice(2);
  if (!requestJson) {
    usage(
      "node node_list_events.js PROTO_ROOT GOOGLE_PROTO_ROOT HOST:PORT CA CERT KEY REQUEST_JSON",
    );
  }
  const request = JSON.parse(requestJson);
  const definition = loadDefinition(root, "qsc/cortex/v1/cortex_service.proto");
  const CortexService = grpc.loadPackageDefinition(definition).qsc.cortex.v1.CortexService;
  const client = new CortexService(address, mtlsCredentials(ca, cert, key));
  const events = [];
  let pages = 0;
  let totalSize = null;
  let token = request.page_token || "";
  const maxPages = request.max_pages || 1000;

  const finish = (out) => {
    printJson(out);
    client.close();
  };

  const next = () => {
    const call = {
      page_size: request.page_size || 0,
      page_token: token,
      filter: request.filter || "",
      order_by: request.order_by || "",
    };
    client.ListEvents(call, { deadline: new Date(Date.now() + 30000) }, (err, response) => {
      if (err) {
        const info = errorInfo(googleRoot, err.metadata) || {};
        finish({
          ok: false,
          code: grpc.status[err.code],
          details: err.details,
          reason: info.reason || null,
          domain: info.domain || null,
          metadata: info.metadata || {},
          pages,
        });
        return;
      }
      pages += 1;
      totalSize = response.total_size || 0;
      for (const e of response.events) {
        events.push([e.id, e.guardian ? e.guardian.id : "", Number(e.seq)]);
      }
      token = response.next_page_token || "";
      if (token && pages < maxPages) {
        next();
      } else {
        finish({ ok: true, pages, total_size: totalSize, events, last_token: token });
      }
    });
  };
  next();
}

main();
