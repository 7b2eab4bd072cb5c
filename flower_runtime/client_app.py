"""The ClientApp `flwr run` loads on each SuperNode (`pyproject.toml`'s `clientapp`): which client
the node is (`query`), and, behind it in `client_work`, one client's work for the engine's round
loop: its local training, its steps of secure aggregation, and what the server asks of its data.

A SuperNode starts a fresh ClientApp process for every message, so this module stays light: torch
and the engine load (with `client_work`) only in the processes that train or answer, never in the
ones that only say which client a node is. Components: `flwr run` loads `client_app` from here
and `server_app` from `server_app`, so a ClientApp process never imports the server side
(database, runs service, the round loop).
"""

from __future__ import annotations

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from flower_runtime.messages import (  # noqa: F401 (re-exported: the app's public face)
    CORRECTION, EVALUATION, HEAD, HISTORY, NODE, POLL_SECONDS, QUERY_TIMEOUT_S, REPO, RESIDUAL, RESULT, RUNTIME,
    SENT, SITE, TASK, TOKENIZER, UNREACHABLE, WEIGHTS, History, RunOptions, check_supported, flat_weights,
    SECAGG_ACTION, history_from, history_record, history_steps, node_partition, sent_record, site_data_path,
    weights_record,
)  # fmt: skip
from flower_runtime.site_data import at_sites, summarize_site

client_app = ClientApp()


@client_app.query()
def describe(message: Message, context: Context) -> Message:
    """Which client this SuperNode is: its partition id and the number of partitions; with the
    data at the sites also its number of responses, its school and its rubric elements."""
    partition_id, num_partitions = node_partition(context.node_config)
    record = ConfigRecord({"partition-id": partition_id, "num-partitions": num_partitions})
    config = RunOptions.from_run_config(context.run_config).config()
    if at_sites(config):
        summary = summarize_site(config, site_data_path(context))
        record.update({"num-examples": summary.num_examples, "school": summary.school,
                       "labels": list(summary.label_names)})  # fmt: skip
    return Message(RecordDict({NODE: record}), reply_to=message)


@client_app.train()
def train(message: Message, context: Context) -> Message:
    """One round of local training (`client_work.train`)."""
    from flower_runtime import client_work  # torch and the engine: only where a client trains (module docstring)

    return client_work.train(message, context)


@client_app.train(SECAGG_ACTION)
def secure_aggregation_step(message: Message, context: Context) -> Message:
    """One step of the round's secure aggregation (`client_work.secagg_step`)."""
    from flower_runtime import client_work  # torch and the engine: only where a client answers (module docstring)

    return client_work.secagg_step(message, context)


@client_app.evaluate()
def evaluate_here(message: Message, context: Context) -> Message:
    """What the server asks of this client's data (`client_work.evaluate`)."""
    from flower_runtime import client_work  # torch and the engine: only where a client answers (module docstring)

    return client_work.evaluate(message, context)
