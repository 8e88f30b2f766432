"""A reproducible ML pipeline: DVC stages over a safetensors shard format, trained with PyTorch."""
