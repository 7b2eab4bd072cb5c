"""The REST API over the runs service (`cli.py serve`): FastAPI routes (`app`), server-sent events
of a run's rounds (`streams`), and the server's binding rules (`server`)."""
