"""Sentiment scoring service: onnxruntime runtime, FastAPI app and batch CLI. Never imports torch."""
