"""Running the model: the runtime (prefill, decode steps, CUDA graphs), sampling, the prompt template, stop text,
the batch-1 generator and the batching engine."""
