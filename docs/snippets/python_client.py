"""A QSC CortexService client in Python: list assessments, follow them, resume after a break.

    python3 python_client.py CORTEX_ADDR CA CERT KEY list FILTER
    python3 python_client.py CORTEX_ADDR CA CERT KEY follow FILTER TOKEN_FILE CHANGES

`list` reads every page of ListAssessments. `follow` subscribes (resuming after the token kept
in TOKEN_FILE, if any), prints CHANGES changes, keeping the token of each change it has
processed, then stops; run it again to go on exactly where it stopped. Needs grpcio,
grpcio-status and the code generated from proto/ (generate-protoc.sh) on PYTHONPATH.
"""

import sys
from pathlib import Path

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from qsc.cortex.v1 import cortex_service_pb2 as pb
from qsc.cortex.v1 import cortex_service_pb2_grpc as pb_grpc


def channel(address: str, ca: str, cert: str, key: str) -> grpc.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=Path(ca).read_bytes(),
        private_key=Path(key).read_bytes(),
        certificate_chain=Path(cert).read_bytes(),
    )
    return grpc.secure_channel(address, credentials)


def reason(error: grpc.RpcError) -> str:
    """The stable reason of a QSC refusal (INVALID_FILTER, RESUME_TOKEN_EXPIRED, ...)."""
    status = rpc_status.from_call(error)
    for detail in status.details if status else ():
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info) and info.domain == "cortex.qsc":
            return f"{info.reason} {dict(info.metadata)}"
    return ""


def list_all(api: pb_grpc.CortexServiceStub, filter_text: str) -> None:
    request = pb.ListAssessmentsRequest(filter=filter_text, order_by="create_time", page_size=50)
    while True:
        response, call = api.ListAssessments.with_call(request, timeout=30)
        group = dict(call.trailing_metadata() or ()).get("qsc-kex-group")
        print(f"page: {len(response.assessments)} of {response.total_size}, key exchange {group}")
        for a in response.assessments:
            print(f"assessment {a.name} revision {a.revision} confidence {a.confidence:.2f}")
        if not response.next_page_token:
            return
        request.page_token = response.next_page_token  # same filter and order, next page


def follow(api: pb_grpc.CortexServiceStub, filter_text: str, token_file: Path, n: int) -> None:
    token = token_file.read_text().strip() if token_file.exists() else ""
    request = pb.SubscribeAssessmentsRequest(
        filter=filter_text, resume_token=token, include_existing=not token
    )
    stream = api.SubscribeAssessments(request)
    seen = 0
    for message in stream:
        if message.WhichOneof("payload") == "change":
            change = message.change
            a = change.assessment
            # Delivery is at least once: a receiver keys its work on (name, revision).
            print(f"change {pb.ChangeType.Name(change.type)} {a.name} revision {a.revision}")
            token_file.write_text(change.resume_token)  # processed: resume after it
            seen += 1
        elif message.progress.snapshot_complete:
            print("snapshot complete")
            token_file.write_text(message.progress.resume_token)
        if seen >= n:
            stream.cancel()
            return


def main() -> int:
    address, ca, cert, key, command, filter_text, *rest = sys.argv[1:]
    with channel(address, ca, cert, key) as ch:
        api = pb_grpc.CortexServiceStub(ch)
        try:
            if command == "list":
                list_all(api, filter_text)
            else:
                follow(api, filter_text, Path(rest[0]), int(rest[1]))
        except grpc.RpcError as error:
            print(f"refused: {error.code().name} {reason(error)}")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
