"""The MLX backend: local training on Apple's MLX (on Linux `mlx[cpu]`) for the image models
(`trainer`) and TinyLLama-v0 + LoRA (`text`); aggregation stays with the engine."""
