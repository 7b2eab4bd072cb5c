"""The runs service, under both faces (the page and `cli.py`): execute a stored experiment and
record it, resume it, launch and stop worker processes, beat its heartbeat, score texts with a
finished run. It owns the processes and threads; `database` only stores, the engine only computes."""
