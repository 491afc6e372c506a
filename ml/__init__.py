"""ML service: Isolation Forest anomaly scores served from ONNX."""

import mesh  # noqa: F401 (first: it sets grpc core's TLS settings before grpc loads)
