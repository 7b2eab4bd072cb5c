"""What the sidebar form asks: one `Field` per config key, grouped as the form shows them.

No Streamlit here: `Field.widget` draws into the container it is given (a column, an expander), so these
definitions are plain data. Every default comes from `ExperimentConfig()`, so the form starts where the
config does, and every option list and number range from `experiment_config.OPTIONS` / `BOUNDS`, the same ones
validation uses when the form is submitted.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from experiment_config import BOUNDS, OPTIONS, ExperimentConfig
from ngss.data import TASKS

PRIVACY_GUIDE = """
**ε** bounds how much one protected unit can change what training reveals: every outcome
becomes at most e^ε times more (or less) likely with or without it. **Smaller ε = more private.**

- **ε ≤ 1**: strong protection.
- **1 – 10**: moderate; where most published DP deep learning lands.
- **ε > 10**: weak; a formal bound that promises little in practice.

**δ** is the small chance that the bound fails: keep it well below 1/N, N = examples per
client (local) or clients (central).

**What each mode protects**
- **none**: nothing formal; model updates can leak training examples.
- **local**: DP-SGD on every client protects **one training example**; the server only sees
  noised updates, so it need not be trusted.
- **central**: protects **a client's whole data** (user-level), but the server sees the clipped
  updates before it adds the noise: clients must trust it.
"""


@dataclass(frozen=True)
class Field:
    """A sidebar widget bound to `section.name` of the config; its default comes from `ExperimentConfig()`."""

    section: str
    name: str
    label: str
    help: str
    # A selectbox's options and a number input's range: by default experiment_config's OPTIONS and BOUNDS
    # for `section.name`; given here only where the form offers less than validation allows.
    options: tuple[str, ...] = ()
    low: float | None = None
    high: float | None = None
    step: float | None = None
    format: str | None = None
    key: str | None = None  # the widget key; default: `name`
    format_func: Callable[[Any], str] | None = None  # a selectbox's option as shown; default: the option

    @property
    def choices(self) -> tuple[str, ...]:
        """The selectbox's options; () for a number, text or checkbox input."""
        return self.options or OPTIONS.get(f"{self.section}.{self.name}", ())

    def bounds(self) -> tuple[float | None, float | None]:
        """The number input's (min, max)."""
        low, high = BOUNDS.get(f"{self.section}.{self.name}", (None, None))
        return (low if self.low is None else self.low), (high if self.high is None else self.high)

    def is_checkbox(self, defaults: ExperimentConfig) -> bool:
        return isinstance(getattr(getattr(defaults, self.section), self.name), bool)

    @property
    def widget_key(self) -> str:
        return self.key or self.name

    def range_problem(self, value: Any) -> str | None:
        """Why a number input's `value` is outside its range (`bounds`), or None. The number inputs take any
        number (a bounded one makes the browser hold back an out-of-range value, so Start would silently do
        nothing): this check names the problem instead."""
        low, high = self.bounds()
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        if (low is not None and value < low) or (high is not None and value > high):
            return f"must be {range_text(low, high)}, got {value:g}"
        return None

    def widget(self, container: Any, defaults: ExperimentConfig) -> Any:
        """The widget, bound to the URL's query parameter of its key: the last-used settings survive a reload
        of the tab (only values that differ from the default appear in the URL)."""
        default = getattr(getattr(defaults, self.section), self.name)
        key, bind = self.widget_key, "query-params"
        if isinstance(default, bool):
            return container.checkbox(self.label, default, key=key, help=self.help, bind=bind)
        if self.choices:
            index = self.choices.index(default)
            return container.selectbox(
                self.label, self.choices, index=index, key=key, help=self.help, format_func=self.format_func or str,
                bind=bind,
            )  # fmt: skip
        if isinstance(default, str):
            return container.text_input(self.label, default, key=key, help=self.help, bind=bind)
        low, high = self.bounds()
        return container.number_input(
            self.label, None, None, default, step=self.step, format=self.format, key=key, bind=bind,
            help=f"{self.help} Allowed: {range_text(low, high)}.",
        )  # fmt: skip


def range_text(low: float | None, high: float | None) -> str:
    """`between 1 and 100,000`, `at least 0`."""
    shown = [None if bound is None else f"{bound:,}" if isinstance(bound, int) else f"{bound:g}" for bound in (low, high)]
    if shown[0] is not None and shown[1] is not None:
        return f"between {shown[0]} and {shown[1]}"
    return f"at least {shown[0]}" if shown[0] is not None else f"at most {shown[1]}"


DATA_FIELDS = (
    Field("data", "dataset", "Dataset", "mnist: handwritten digits (models cnn, mlp, cnn-dp, scatter-*). ngss: rubric "
          "scoring of middle-school science explanations, synthetic responses — not real student data (models "
          "tinyllama-lora, minilm-lora). csv: your lab's own NGSS files, uploaded under NGSS rubric scoring."),
    Field("model", "name", "Model", "For MNIST: cnn, the CNN of McMahan et al. 2017 (1.66M parameters); mlp, their "
          "2NN (two hidden layers of 200); cnn-dp, the small tanh CNN DP-SGD papers use (26k parameters); "
          "scatter-linear and scatter-cnn, a fixed wavelet scattering transform of each client's images "
          "(free in ε) with a linear (40k) or small CNN (33k) head: the most accurate at small ε. "
          "For text (ngss, csv): tinyllama-lora, TinyLLama-v0 (4.6M parameters) "
          "with LoRA and a multi-label head; minilm-lora, all-MiniLM-L6-v2 (22.7M, pretrained, works offline). "
          "Text models exchange only LoRA + head.", key="model"),
    Field("data", "partition", "Partition", "How the training data is split over clients: iid (uniform at random), "
          "dirichlet (label skew set by α), shards (two shards of label-sorted data each) or natural (one client "
          "per school: ngss and csv with a Group column; the synthetic data has 9 schools, so Clients = 9)."),
    Field("data", "dirichlet_alpha", "Dirichlet α", "Only for the dirichlet partition: 0.1 gives each client a few "
          "labels, 100 is close to IID.", step=0.1, format="%.2f"),
)  # fmt: skip
NGSS_FIELDS = (
    Field("data", "ngss_task", "Task", "ngss: which of the nine NGSS tasks to generate responses for (each has its "
          "own rubric elements E1, E2, …). csv takes the task from the file name.",
          format_func=lambda slug: TASKS[slug].title),
    Field("model", "pretrained", "Pretrained backbone", "Load the published weights (TinyLLama-v0 from the Hugging "
          "Face Hub, needs the network once; MiniLM ships with the app). Off: the same architecture with seeded "
          "random weights and a tokenizer trained on the training responses (offline)."),
    Field("model", "lora_rank", "LoRA rank r", "Rank of the LoRA adapters: r · (in + out) values per adapted "
          "layer travel each round."),
    Field("model", "lora_alpha", "LoRA α", "Scale of the adapters' update (α / r).", step=1.0,
          format="%.1f"),
    Field("model", "lora_dropout", "LoRA dropout", "Dropout on the adapters' input while training.", step=0.05,
          format="%.2f"),
    Field("model", "max_length", "Max tokens", "Tokens per response at most; longer responses are cut."),
    Field("model", "lora_targets", "LoRA targets", "Modules that get adapters, comma-separated; empty = the "
          "backbone's default (q_proj, v_proj for TinyLLama; query, value for MiniLM)."),
    Field("model", "lora_layers", "LoRA layers", "Adapters on the top N transformer layers only; the frozen layers "
          "below run once per response and are cached, so a step costs about N/6 of MiniLM's full depth. "
          "0 = every layer. The scoring recipe uses 2."),
    Field("federation", "bucket_by_length", "Batch by length", "Each local batch takes responses of similar "
          "length (sorted within pools of 16 batches, then the batches shuffled), so less padding is computed. "
          "Not with local DP, whose batches are drawn at random."),
    Field("model", "pooling", "Pooling", "What the head reads of a response: mean, the average over its tokens "
          "(MiniLM's default: it was pretrained as a sentence encoder this way, and learns far faster with it); "
          "cls, BERT's pooler over [CLS] (MiniLM only; runs stored before this option used it); last, the last "
          "token (TinyLLama's default and MLX's only choice).",
          format_func=lambda p: p or "model's default"),
)  # fmt: skip
# The measured rubric-scoring recipe (README, "NGSS rubric scoring"): (widget key, value), applied by a button.
NGSS_RECIPE = (
    ("dataset", "ngss"), ("model", "minilm-lora"), ("pretrained", True), ("pooling", ""), ("partition", "natural"),
    ("lora_layers", 2), ("lora_targets", "query,key,value"), ("bucket_by_length", True),
    ("num_clients", 9), ("clients_per_round", 9), ("rounds", 10), ("local_epochs", 3), ("batch_size", 4),
    ("learning_rate", 0.003), ("client_optimizer", "adamw"), ("strategy", "fedavg"),
)  # fmt: skip
NGSS_NOTE = (
    "Rubric scoring (Dataset ngss or csv, Model tinyllama-lora or minilm-lora). **ngss: synthetic responses — "
    "not real student data**, generated from the published task statistics, seeded by Seed. **csv**: your lab's "
    "files, uploaded below. The **NGSS recipe** button above the form sets the measured settings."
)
FEDERATION_FIELDS = (
    Field("federation", "num_clients", "Clients", "How many clients the training data is split across."),
    Field("federation", "clients_per_round", "Per round", "Clients sampled to train in each round; at most the "
          "number of clients."),
    Field("federation", "rounds", "Rounds", "Communication rounds: broadcast the model, train locally, aggregate."),
    Field("federation", "local_epochs", "Local epochs", "Passes each sampled client makes over its own data per "
          "round."),
    Field("federation", "batch_size", "Batch size", "Examples per local SGD step."),
    Field("federation", "learning_rate", "Learning rate", "Step size of the clients' SGD.",
          step=0.01, format="%.4f"),
    Field("federation", "strategy", "Strategy", "How the server aggregates client updates (fedavg: average "
          "weighted by examples). median, trimmed_mean, krum, multi_krum and bulyan resist malicious clients. "
          "Their settings: Aggregation strategy, below."),
    Field("system", "seed", "Seed", "Seeds partitioning, client sampling, initialisation and noise: same seed, same "
          "run."),
)  # fmt: skip
PRIVACY_FIELDS = (
    Field("privacy", "mode", "Privacy", "none: no formal guarantee. local: DP-SGD on every client (sample-level ε "
          "per client, the run reports the largest). central: DP-FedAvg, clipped client updates plus server noise "
          "(user-level ε; clients are then sampled as Client sampling says).", key="privacy_mode"),
    Field("privacy", "accountant", "Accountant", "Opacus accountant that turns the noise into ε: rdp (Rényi DP) "
          "or prv (tighter numerical bound)."),
    Field("federation", "client_sampling", "Client sampling", "Central DP: poisson takes each client with "
          "probability clients per round / clients (the count varies), ε for adding or removing one client. fixed "
          "takes exactly clients per round, ε for replacing one client's data (RDP accountant only). cyclic "
          "(DP-FTRL only) takes the next clients per round of one seeded order, so each client comes back once every "
          "clients / clients per round rounds. Other modes always take exactly clients per round."),
    Field("privacy", "mechanism", "Central mechanism", "Central DP: dp-fedavg adds fresh noise to each round's sum "
          "(ε amplified by client sampling). dp-ftrl (Kairouz et al. 2021) adds tree-correlated noise to the running "
          "sum, needs no sampling assumption (fixed or cyclic client sampling; zCDP accounting); it pays for clients "
          "that take part in many rounds, so cyclic, which brings each back once a pass, costs least."),
    Field("privacy", "noise_multiplier", "Noise σ", "Noise standard deviation as a multiple of the clip norm C. "
          "Ignored when a target ε is set.", step=0.1, format="%.3f"),
    Field("privacy", "max_grad_norm", "Clip norm C", "Local: bound on each example's gradient. Central: bound on "
          "each client's update.", step=0.1, format="%.3f"),
    Field("privacy", "target_epsilon", "Target ε", "> 0: choose σ before the run so the whole run ends at or "
          "below this ε (0 = use σ as given).", step=0.5, format="%.2f"),
    Field("privacy", "max_epsilon", "Budget ε", "> 0: stop before a round that would exceed this ε (0 = no "
          "budget).", step=0.5, format="%.2f"),
    # δ is valid in (0, 1); a number input needs closed bounds, and δ ≥ 0.5 promises nothing.
    Field("privacy", "delta", "δ", "The δ of (ε, δ)-DP; keep it well below 1 / (examples per client).",
          low=1e-12, high=0.5, step=1e-6, format="%.1e"),
)  # fmt: skip
ADVANCED_FIELDS = (
    Field("data", "max_train_examples", "Max train examples", "Train on a seeded random subset of the training "
          "set; 0 = all of it."),
    Field("data", "max_test_examples", "Max test examples", "Evaluate on a seeded random subset of the test set; "
          "0 = all of it."),
    Field("federation", "client_optimizer", "Client optimizer", "sgd: plain SGD. adamw: AdamW (weight decay 0.01), "
          "created afresh each round, so its moments do not carry over between rounds; use a smaller learning "
          "rate (0.001–0.003: the NGSS recipe uses 0.003). Not with scaffold, local DP or finetune."),
    Field("system", "num_workers", "Trainer processes", "Clients trained in parallel processes; 0 = one per core, "
          "1 = inside the worker itself."),
    Field("system", "runtime", "Runtime", "in-process: this machine's engine (fastest). flower: a real Flower "
          "deployment on this machine (a SuperLink and one SuperNode per client on loopback, stopped when the run "
          "ends) with the same rounds as in-process: every setting, each node keeping its own residuals, heads and "
          "accountant; secure aggregation runs between the nodes, with central DP each adding its own noise share."),
    Field("system", "backend", "Backend", "torch, or mlx (Apple's MLX; on Linux the slower mlx[cpu]) for "
          "local training of the CNN, MLP and TinyLLama-v0 + LoRA; MLX has no DP-SGD."),
    Field("system", "precision", "Precision", "fp32, or bf16: the clients' forward pass under bfloat16 autocast "
          "(faster on CPUs with AVX-512 bf16 or AMX); weights, updates, aggregation and noise stay fp32. Torch "
          "backend only; not with local DP."),
    Field("privacy", "audit", "Audit", "After the run, measure leakage empirically. loss: a membership-inference "
          "attack on trained-on vs held-out examples (quick). one_run: Steinke et al. 2023's one-run audit — "
          "canaries with random labels, half trained on at random, guessed from their losses, give a 95% lower "
          "bound on ε beside the accountant's (MNIST, in-process)."),
    Field("privacy", "audit_examples", "Audit examples", "The loss audit: this many trained-on and as many "
          "held-out examples (0 = no audit)."),
    Field("privacy", "audit_canaries", "Audit canaries", "The one-run audit: how many canaries (half of them "
          "trained on); more give a tighter bound and cost the test set as many examples."),
    Field("privacy", "adaptive_clipping", "Adaptive clipping (central DP)", "Move the clip norm C each round towards "
          "the target quantile of client update norms (Andrew et al. 2021). The count it uses is noised too, and "
          "the reported ε covers both; needs enough clients per round."),
    Field("privacy", "secure_noise", "Secure noise", "Draw the DP noise from the operating system's "
          "cryptographically secure generator (os.urandom), not from the seed, and the sampling with it (central DP: "
          "which clients each round takes; local DP: DP-SGD's batches): nobody who knows the seed can reproduce "
          "them, and the run cannot be repeated exactly."),
    Field("privacy", "augmentations", "Augmentation multiplicity (local DP)", "K > 0: DP-SGD sees each example "
          "as K random shifts of up to 2 pixels and clips the mean of their gradients (De et al. 2022). ε is "
          "unchanged; each step costs about K times as much. CNN, CNN-DP and MLP (not the scatter models, whose "
          "features are computed once). 0 = off."),
    Field("privacy", "target_quantile", "Target quantile", "Adaptive clipping: the share of client updates that "
          "should fit under C unclipped.", step=0.05, format="%.2f"),
    Field("privacy", "clip_learning_rate", "Clip learning rate", "Adaptive clipping: how fast C moves, "
          "C ← C·exp(−rate·(unclipped share − target quantile)).", step=0.05, format="%.2f"),
)  # fmt: skip

# Inside a form a widget's change reruns nothing until submit, so a strategy's parameters cannot appear only
# once it is chosen: every parameter is shown, and its help names the strategies that read it.
STRATEGY_FIELDS = (
    Field("federation", "proximal_mu", "FedProx μ", "fedprox: weight of the proximal term μ/2·‖w − w_global‖² "
          "that keeps local training near the global model.", step=0.01, format="%.3f"),
    Field("federation", "server_learning_rate", "Server learning rate", "fedavgm, fedadagrad, fedadam, fedyogi, "
          "scaffold: the server's step size η on the aggregated update; 0 = the strategy's default.", step=0.1,
          format="%.3f"),
    Field("federation", "server_momentum", "Server momentum", "fedavgm: momentum of the server's update.",
          step=0.05, format="%.3f"),
    Field("federation", "server_ema", "Server EMA decay", "Any strategy: the evaluated and stored model is "
          "an exponential moving average of the global weights with this decay (e.g. 0.9); free in ε "
          "(post-processing). Clients still train from the latest global model. 0 = off.", step=0.05, format="%.4f"),
    Field("federation", "tau", "τ", "fedadagrad, fedadam, fedyogi: adaptivity, added to the root of the second "
          "moment (smaller = more adaptive).", step=1e-3, format="%.1e"),
    Field("federation", "beta1", "β₁", "fedadam, fedyogi, fedadagrad: decay of the first moment (momentum) of the "
          "server's update.", step=0.01, format="%.3f"),
    Field("federation", "beta2", "β₂", "fedadam, fedyogi: decay of the second moment.",
          step=0.001, format="%.4f"),
    Field("federation", "trim_fraction", "Trim fraction", "trimmed_mean: share of the updates dropped at each end, "
          "per coordinate, before averaging.", step=0.05, format="%.2f"),
    Field("federation", "byzantine_clients", "Byzantine clients f", "krum, multi_krum, bulyan: attackers tolerated "
          "per round. krum and multi_krum need clients per round ≥ 2f + 3, bulyan ≥ 4f + 3."),
    Field("federation", "multi_krum_keep", "Multi-Krum keep m", "multi_krum: how many updates with the best Krum "
          "scores are averaged; 0 = n − f."),
    Field("federation", "weighting_exponent", "Weighting exponent a", "adaptive_weighting: a client's weight ∝ "
          "(its share of examples)^a · (its share of validation accuracy)^(1 − a). Needs a client holdout "
          "(Personalization).", step=0.1, format="%.2f"),
    Field("federation", "qffl_q", "q-FFL q", "qfedavg: how much more clients whose loss is high weigh "
          "(Li et al. 2020); 0 = FedAvg, larger = a more even accuracy across clients.", step=0.5, format="%.2f"),
    Field("federation", "qffl_lipschitz", "q-FFL Lipschitz L", "qfedavg: L sets the step, about 1/(1 + q·L·"
          "‖update‖²/loss) of FedAvg's; 0 = 1/learning rate, the paper's default. Smaller L: longer steps.",
          step=0.5, format="%.2f"),
)  # fmt: skip
CLIENT_FIELDS = (
    Field("federation", "selection", "Selection", "uniform: clients drawn at random each round. power_of_choice: "
          "sample d candidates and pick those with the highest local loss (Cho et al. 2020). availability: favour "
          "clients whose updates have been arriving."),
    Field("federation", "selection_candidates", "Candidates d", "power_of_choice: candidates sampled before "
          "picking, between clients per round and clients; 0 = 2 × clients per round."),
    Field("federation", "dropout_probability", "Dropout probability", "Chance that a selected client drops out of "
          "a round.", step=0.05, format="%.2f"),
    Field("federation", "dropout_stage", "Dropout stage", "before: a dropped client never starts. during: it "
          "trains, but its update never arrives (lost)."),
    Field("federation", "dropout_heterogeneous", "Per-client dropout", "Each client's own dropout probability, "
          "drawn once, uniform in [0, 2p]."),
    Field("federation", "min_clients", "Min updates", "Fewer updates arrive than this: the round is skipped and "
          "the model stays as it was. Central DP never skips: it always releases its noised sum."),
    Field("federation", "speed_spread", "Speed spread σ", "How much the clients' compute speeds differ: σ of a "
          "lognormal speed factor (0 = all equally fast).", step=0.1, format="%.2f"),
    Field("federation", "round_deadline", "Round deadline", "In units of the median client's full local work at "
          "speed 1 (0 = no deadline). Slower clients are stragglers.", step=0.5,
          format="%.2f"),
    Field("federation", "straggler_policy", "Stragglers", "partial: a straggler sends what it trained by the "
          "deadline (fewer local steps). drop: it is dropped (late)."),
    Field("federation", "mode", "Round mode", "sync: each round waits for its clients. async (FedBuff): clients train at "
          "their own speed from whichever model they fetched; the server steps once the buffer is full, and "
          "'Rounds' counts server steps.", key="federation_mode"),
    Field("federation", "buffer_size", "Buffer K", "async: updates applied per server step (the earliest to arrive)."),
    Field("federation", "max_concurrency", "Concurrency", "async: clients training at once (≥ K, ≤ clients)."),
    Field("federation", "staleness_exponent", "Staleness exponent", "async: an update s server steps stale weighs "
          "(1 + s)^(−a); 0.5 = 1/√(1 + s), 0 = no discount.", step=0.1, format="%.2f"),
)  # fmt: skip
PERSONALIZATION_FIELDS = (
    Field("federation", "client_holdout", "Client holdout", "Share of each client's examples held out as its own "
          "test split; personalization and adaptive_weighting need it.", step=0.05,
          format="%.2f"),
    Field("federation", "personalization", "Personalization", "none. fedper: the final layer stays on each client. "
          "finetune: after training, each client fine-tunes the global model locally. Both are scored against "
          "the global model on each client's held-out split."),
    Field("federation", "finetune_epochs", "Fine-tune epochs", "finetune: local epochs after the last round."),
)  # fmt: skip
ATTACK_FIELDS = (
    Field("attack", "fraction", "Malicious fraction", "Share of all clients that are malicious (seeded: the same "
          "clients every round); 0 = nobody.", step=0.05, format="%.2f", key="attack_fraction"),
    Field("attack", "behaviour", "Behaviour", "sign_flip: send −scale × the honest update. gaussian: send N(0, σ²) "
          "noise. scale: send scale × the update (model replacement). label_flip: train on flipped labels.",
          key="attack_behaviour"),
    Field("attack", "scale", "Scale", "sign_flip and scale: the factor applied to the update.",
          step=1.0, format="%.1f", key="attack_scale"),
    Field("attack", "noise_std", "Noise σ", "gaussian: standard deviation of the noise sent for each weight.",
          step=0.1, format="%.2f", key="attack_noise_std"),
    Field("federation", "exclusion", "Exclude suspects", "Every round the server scores each update's suspicion "
          "(distance to the median update, direction, norm); the Federation panel marks the flagged clients. "
          "none: score only. flagged: leave flagged clients out of the aggregate (not with secure aggregation "
          "or central DP, which hide single updates)."),
    Field("federation", "exclusion_flags", "Flags k", "flagged: a client is left out once it was flagged in k of "
          "the last m rounds (k ≤ m)."),
    Field("federation", "exclusion_window", "Window m", "flagged: how many recent rounds (this one included) "
          "count towards k."),
)  # fmt: skip
COMMUNICATION_FIELDS = (
    Field("communication", "compression", "Compression", "none: dense float32 updates. topk: only the largest "
          "coordinates (an index and a value each). qsgd: stochastic quantization to a few bits per coordinate."),
    # From 1e-4, the least "%.4f" shows (validation accepts down to 1e-6, e.g. from a TOML file).
    Field("communication", "topk_fraction", "Top-k fraction", "topk: share of the coordinates sent.", low=1e-4,
          step=0.005, format="%.4f"),
    Field("communication", "quantization_bits", "QSGD bits", "qsgd: bits per coordinate, sign included."),
    Field("communication", "error_feedback", "Error feedback (top-k)", "topk: keep what was not sent and add it to the "
          "next update, so nothing is lost, only delayed."),
    Field("communication", "topk_momentum", "Momentum correction (top-k)", "topk: DGC momentum correction with "
          "momentum factor masking; the clients keep a velocity m·v + update (0 = off; needs error feedback).",
          step=0.05, format="%.2f"),
    Field("communication", "topk_warmup_rounds", "Top-k warm-up rounds", "topk: the share sent starts dense and "
          "falls exponentially to the top-k fraction over this many rounds (0 = none)."),
    Field("communication", "bandwidth_mbps", "Bandwidth (Mbit/s)", "Median client bandwidth of the simulated "
          "network, both directions.", step=1.0, format="%.1f"),
    Field("communication", "bandwidth_spread", "Bandwidth spread σ", "σ of the lognormal spread of bandwidths "
          "across clients.", step=0.1, format="%.2f"),
    Field("communication", "latency_ms", "Latency (ms)", "Median one-way latency of the simulated network.",
          step=10.0, format="%.0f"),
    Field("communication", "latency_spread", "Latency spread σ", "σ of the lognormal spread of latencies across "
          "clients.", step=0.1, format="%.2f"),
)  # fmt: skip
SECURE_AGGREGATION_FIELDS = (
    Field("federation", "secure_aggregation", "Secure aggregation", "The server learns only the weighted sum of "
          "the updates (Bonawitz et al. 2017: pairwise masks, Shamir-shared keys so dropouts can be unmasked). "
          "Works with fedavg, fedprox, fedavgm, fedadagrad, fedadam, fedyogi, not with compression. With central "
          "DP every client joins each round and adds a share of the noise, so the server never sees an "
          "un-noised update (distributed noise)."),
    Field("federation", "secagg_threshold", "Threshold t", "Share of a client's neighbourhood whose key shares "
          "are needed to unmask it; fewer survivors than t and the round is skipped. With central DP also the "
          "share of all clients whose noise must be in a released sum: each adds 1/(t·n) of the noise variance, "
          "so a low t costs accuracy (noise × √(survivors / t·n)).",
          step=0.05, format="%.2f"),
    Field("federation", "secagg_neighbours", "Neighbours k", "SecAgg+: each client masks with k (even) random "
          "neighbours instead of all, so cost grows as n·k, not n²; 0 = everyone."),
    Field("privacy", "distributed_noise", "Distributed noise (central DP)", "The clients' noise shares under "
          "secure aggregation. gaussian: real shares, inputs rounded to a 2^-24 fixed-point grid, accounted as a "
          "continuous Gaussian. skellam (Agarwal et al. 2021): each client scales its clipped update to integers "
          "and adds integer Skellam noise, the protocol sums integers exactly, and ε is the discrete mechanism's "
          "(Poisson client sampling, no adaptive clipping)."),
)  # fmt: skip
# The folded groups under the privacy settings: (title, icon, a note above the fields or "", fields).
SCENARIO_GROUPS = (
    ("Aggregation strategy", ":material/merge:", "The strategy is chosen above; each setting is read only by the "
     "strategies its help names.", STRATEGY_FIELDS),
    ("Selection & unreliable clients", ":material/wifi_off:", "", CLIENT_FIELDS),
    ("Personalization", ":material/person:", "Scored after the last round on each client's held-out split.",
     PERSONALIZATION_FIELDS),
    ("Attack", ":material/bug_report:", "", ATTACK_FIELDS),
    ("Communication", ":material/network_check:", "Bandwidth and latency set the simulated round time; "
     "compression sets what an upload costs.", COMMUNICATION_FIELDS),
    ("Secure aggregation", ":material/lock:", "", SECURE_AGGREGATION_FIELDS),
)  # fmt: skip


# Every field of the form, with the group it sits in: for the labels below and the range check at Start.
FOLDER_FIELDS = (
    Field("data", "image_size", "Image size", "Dataset folder: every image is resized to this many pixels square; "
          "the image models are built for it."),
    Field("data", "image_channels", "Channels", "Dataset folder: 1 reads the images grey, 3 in colour (RGB).", step=2),
)  # fmt: skip

FIELD_GROUPS = (
    ("Data & model", DATA_FIELDS), ("NGSS rubric scoring", NGSS_FIELDS), ("Your own images", FOLDER_FIELDS),
    ("Federation", FEDERATION_FIELDS),
    ("Privacy", PRIVACY_FIELDS), *((title, fields) for title, _, _, fields in SCENARIO_GROUPS),
    ("Advanced", ADVANCED_FIELDS),
)  # fmt: skip
ALL_FIELDS = tuple(field for _, fields in FIELD_GROUPS for field in fields)


def _field_labels() -> dict[str, str]:
    """`section.name` → the sidebar's label; a label used twice ("Noise σ") gets its group: "Noise σ (Attack)"."""
    counts: dict[str, int] = {}
    for field in ALL_FIELDS:
        counts[field.label] = counts.get(field.label, 0) + 1
    labels = {
        f"{field.section}.{field.name}": field.label if counts[field.label] == 1 else f"{field.label} ({group})"
        for group, fields in FIELD_GROUPS
        for field in fields
    }
    return labels | {"data.data_dir": "Data directory", "data.csv_path": "Lab CSV files",
                     "data.folder_path": "Image folder zip"}  # fmt: skip


FIELD_LABELS = _field_labels()
# A key named without its section ("needs clients_per_round >= 11"): those with an underscore whose name is unique.
_NAMES = [key.split(".")[1] for key in FIELD_LABELS]
BARE_LABELS = {key.split(".")[1]: label for key, label in FIELD_LABELS.items()
               if "_" in key.split(".")[1] and _NAMES.count(key.split(".")[1]) == 1}  # fmt: skip
_CONFIG_KEY = re.compile(r"\b([a-z]+\.[a-z_0-9]+)\b|(?<![.\w])([a-z]+_[a-z_0-9]+)\b")


def labelled(message: str) -> str:
    """A validation message with its config keys (`federation.num_clients`, or `clients_per_round` alone)
    replaced by the sidebar's labels in bold (**Clients**); keys the sidebar does not show stay as they are."""

    def label(match: re.Match) -> str:
        dotted, bare = match[1], match[2]
        shown = FIELD_LABELS.get(dotted) if dotted else BARE_LABELS.get(bare)
        return f"**{shown}**" if shown else match[0]

    return _CONFIG_KEY.sub(label, message)


def widget_values(config: ExperimentConfig) -> dict[str, Any]:
    """The value of every form widget (by key) that shows `config`: what "Load into sidebar" sets."""
    values = {field.widget_key: getattr(getattr(config, field.section), field.name) for field in ALL_FIELDS}
    return values | {"data_dir": config.data.data_dir}


def ngss_recipe_sections() -> dict[str, dict[str, Any]]:
    """`NGSS_RECIPE` as config sections ({"model": {"name": "minilm-lora", ...}, ...}): what the button sets,
    for `ExperimentConfig.from_dict` (bench.ngss runs the recipe from here)."""
    by_key = {field.widget_key: field for field in ALL_FIELDS}
    sections: dict[str, dict[str, Any]] = {}
    for key, value in NGSS_RECIPE:
        field = by_key[key]
        sections.setdefault(field.section, {})[field.name] = value
    return sections
