"""What a finished sweep gives: the report, the headline, the exported model and its card, ONNX and costs,
external validation."""
