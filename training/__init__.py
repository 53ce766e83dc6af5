"""Training package: data, tokenizer, recurrent models, train loop and ONNX export (needs the `train` extra)."""
