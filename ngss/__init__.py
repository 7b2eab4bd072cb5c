"""The NGSS workload: nine science tasks and their rubric elements, the synthetic response
generator, the lab's CSV format, rubric metrics, and the text models (TinyLLama-v0 / MiniLM
with LoRA and a multi-label head) that score responses."""
