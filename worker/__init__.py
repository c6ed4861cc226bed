"""The GPU worker: holds the quantized model and generates answers."""
