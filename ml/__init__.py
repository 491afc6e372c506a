"""ML service: Isolation Forest anomaly scores served from ONNX."""
