"""The same experiments on Flower: a ServerApp and a ClientApp over this project's engine.

Flower (`flwr`) carries the rounds between real processes: a SuperLink routes messages, one
SuperNode per site runs the ClientApp next to its data, and the ServerApp drives the rounds.
What runs inside them is this project's code, not a second implementation:

- the ServerApp (`server_app`) runs the engine's own round loop (`FederatedRun.rounds`:
  sampling, simulated dropouts and attackers, aggregation, DP-FedAvg's noise, evaluation)
  with `server.FlowerTrainer` as its trainer, and records every round with its checkpoint
  through the runs service (experiment runtime "flower"), so the app's live view and history
  show a Flower run like an in-process one, and a killed run resumes;
- each ClientApp finds its own data: its partition exactly as the engine computes it (same
  seeded subset, partition and holdout of MNIST or the synthetic NGSS responses; its
  `partition-id` is the client id), or, for imported NGSS responses, its school's own CSV
  file (`data-path`; `site_data`: the rows never leave the site), and trains it with
  `engine.client_trainers.ClientTrainer` (local SGD or DP-SGD) with the batch-order seed,
  step limit and label flip of its task (`client_app`). A site may guard its own local DP
  with `--node-config` keys `min-noise-multiplier`, `max-epsilon` and `delta`.

What travels: the `ExperimentConfig` as JSON under the run-config key `experiment` (with
`db-url`, `experiment-id` and the timeouts); each round, a `train` message with the global
weights (an ArrayRecord of the model's cleanly named parameters), the task's seed, σ and,
with local DP, the server's copy of the client's accountant history, with SCAFFOLD the
client's correction c − c_i (the control variates stay on the server, in the strategy), and
with the data at the sites the run's rubric elements and schools (and a TinyLLama-from-config
tokenizer); each reply with the new weights (text models: LoRA + head only), steps, loss and
the client's full history. The client keeps its history in its
node state (`context.state`), so ε is cumulative over every round it trained, even rounds
whose reply was lost; a SuperNode that restarted (empty state) continues from the server's
copy. Every wait has a timeout: a client whose reply does not come within `round-timeout`
is recorded "lost" and the round completes with the others, or is skipped (model
unchanged, recorded) below `federation.min_clients`.

Run it on this machine (a SuperLink and one SuperNode per client on loopback, started and
stopped by PID; `insecure` is only for loopback):

    from flower_runtime.deployment import run_local_deployment
    experiment_id = run_local_deployment(config, db_url="sqlite:///experiments.db")

Across machines (the real recipe; Flower's docs: "Enable TLS connections", "Authenticate
SuperNodes"):

1. Server: `flower-superlink --host 0.0.0.0 --port 9093 --ssl-ca-certfile ca.crt
   --ssl-certfile server.pem --ssl-keyfile server.key --enable-supernode-auth
   --disable-runtime-dependency-installation` (one HTTPS port for the Fleet, Control and
   ServerApp APIs; it listens on 127.0.0.1:8000 unless told otherwise). Register each
   site's public key: `flwr supernode register site.pub <connection>`. The ServerApp runs
   here, so the database (`db-url`) and MNIST (or, for imported NGSS responses, the
   `{task}_test.csv` beside `data.csv_path`) must be reachable from here.
2. Each site: `flower-supernode --superlink server.example.org:9093 --root-certificates
   ca.crt --auth-supernode-private-key site.key --node-config "partition-id=3
   num-partitions=10 data-dir='/srv/mnist'"` (`data-dir` overrides `data.data_dir`;
   optional `num-threads`). A school with imported NGSS responses names its own file instead:
   `--node-config "partition-id=0 num-partitions=9 data-path='/srv/ngss/our_school.csv'"`
   (partition-id: the school's place in the sorted school names of the test file). Sites
   need this repository's Python requirements installed: the FAB carries the code, not its
   dependencies.
3. Anywhere with this checkout: a connection in `$FLWR_HOME/config.toml`
   (`[superlink.lab] address = "server.example.org:9093"`, `root-certificates = "ca.crt"`),
   then `flwr run . lab --run-config run.toml`, with `run.toml` holding
   `experiment = '<ExperimentConfig JSON>'` and `db-url = "postgresql+psycopg://..."`.

Each SuperNode makes its own upload (a simulated attacker's poisoning, then compression with
its own top-k residual), keeps its FedPer head, answers power-of-choice's loss question and
computes its personalization on its own held-out split: residuals and heads never leave it.
A node trains with torch or, with `system.backend = "mlx"`, with MLX. Secure aggregation runs
with the nodes as messages (`secure_sum`); with central DP every node, sampled or not, adds its
own share of the noise to its input there. The one limit (refused by `messages.check_supported`,
which says why): imported NGSS responses at the sites need `data.partition = "natural"`.
"""

import os

# flwr reads these once, when it is imported (by any module of this package): no telemetry, no
# update check (offline use).
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
