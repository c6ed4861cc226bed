"""Checkpoint files to an int4 ``nn.Module``: where the checkpoint is, what its quantization says, the GPTQ layout,
the int4 layers and the loader; the offline demo model."""
