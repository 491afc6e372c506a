"""`qsc.alpha.v1.AlphaService`: decode, call the core, encode. Errors are raised as domain errors
and mapped to status codes by the mesh interceptor (mesh.status).

ScanMemory reads /proc for a few ms per process: it runs in a thread so the event loop (and the
Subscribe streams it serves) never waits on it.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

from alpha import _convert, rulecheck
from alpha.errors import AlphaInvalidArgumentError
from alpha.memscan import ScanMemoryCore
from alpha.pipeline import Pipeline
from mesh.server import ServiceBinding
from qsc.alpha.v1 import alpha_service_pb2 as pb
from qsc.alpha.v1 import alpha_service_pb2_grpc as pb_grpc

SERVICE: Final = pb.DESCRIPTOR.services_by_name["AlphaService"].full_name


class AlphaServicer(pb_grpc.AlphaServiceServicer):
    def __init__(self, pipeline: Pipeline, memscan: ScanMemoryCore) -> None:
        self._pipeline = pipeline
        self._memscan = memscan

    def binding(self) -> ServiceBinding:
        return ServiceBinding(SERVICE, pb_grpc.add_AlphaServiceServicer_to_server, self)

    async def ScanMemory(  # noqa: N802 (gRPC method name)
        self, request: pb.ScanMemoryRequest, context: Any
    ) -> pb.ScanMemoryResponse:
        return await asyncio.to_thread(self._memscan.scan_memory, request)

    async def ListRules(  # noqa: N802 (gRPC method name)
        self, request: pb.ListRulesRequest, context: Any
    ) -> pb.ListRulesResponse:
        ruleset = self._pipeline.engine.ruleset  # one read: one consistent ruleset
        rules = sorted(
            (r for r in ruleset.rules if r.enabled or request.include_disabled),
            key=lambda r: r.id,
        )
        response = pb.ListRulesResponse(
            rules=[_convert.rule_to_proto(r) for r in rules],
            ruleset_version=ruleset.version,
        )
        response.load_time.FromNanoseconds(self._pipeline.rules_loaded_ns)
        return response

    async def ValidateRules(  # noqa: N802 (gRPC method name)
        self, request: pb.ValidateRulesRequest, context: Any
    ) -> pb.ValidateRulesResponse:
        if not request.files:
            raise AlphaInvalidArgumentError("files: give at least one rule file to validate")
        if len(request.files) > rulecheck.MAX_FILES:
            raise AlphaInvalidArgumentError(f"files: at most {rulecheck.MAX_FILES} per request")
        texts = [(f.name or f"file{i + 1}.yaml", f.content) for i, f in enumerate(request.files)]
        before: list[tuple[str, str]] = []
        if request.with_loaded_rules:
            before = await asyncio.to_thread(
                rulecheck.loaded_texts, self._pipeline.engine.ruleset.files
            )
        result = await asyncio.to_thread(rulecheck.validate, texts, before=before)
        return _convert.validation_to_proto(result)
