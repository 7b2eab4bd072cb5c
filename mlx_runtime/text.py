"""NGSS rubric scoring on MLX: TinyLLama-v0 as mlx-lm's Llama with LoRA and a multi-label
head, the same model as `text_models`' torch `TextScorer` for `model.name = "tinyllama-lora"`.

    torch_scorer = create_text_model("tinyllama-lora", num_classes=5, seed=0, pretrained=False)
    scorer, layout = scorer_from_torch(torch_scorer)   # frozen weights copied once
    logits = scorer(input_ids)                          # (B, 5), input_ids (B, L) right-padded
    load_flat(scorer, layout, exchanged)                # LoRA + head from the exchange vector

The model (`LlamaScorer`): `mlx_lm.models.llama.LlamaModel` (embeddings, decoder layers,
final RMSNorm) + `score`, a bias-free linear layer over the hidden state of each row's last
non-padding token, as transformers' LlamaForSequenceClassification pools. LoRA is mlx-lm's
`LoRALinear` on the modules peft wrapped (q_proj, v_proj by default), with peft's scale α/r
and dropout p read off the torch model, so both compute y = W·x + (α/r)·B·A·dropout(x).

Exchange (torch order and names, `model.get_parameters`): peft keeps lora_A.weight (r, in)
and lora_B.weight (out, r); mlx-lm keeps lora_a (in, r) and lora_b (r, out), the
transposes; score.weight is (K, hidden) in both.

Attention is causal only, without a padding mask: rows are right-padded (`text_models`:
pad id 0 never occurs in text), so a real token only ever attends to real tokens and the
pooled logits equal torch's masked ones. `TextWorkload` checks that every row is right-
padded and refuses data that is not. Each batch is cut to its own longest row, like
`TextScorer`; padding changes no logit, only the work.

Needs `mlx-lm` (`pip install mlx-lm`) besides mlx. MiniLM (BERT) has no MLX version here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from engine.client_trainers import TrainSettings
from data_handler import FederatedData
from mlx_runtime.exchange import ExchangeLayout, Placement, place_parameters, require_mlx
from model import create_model, get_parameters

try:
    import mlx.core as mx
    import mlx.nn as mnn
    from mlx.utils import tree_flatten, tree_unflatten
    from mlx_lm.models import llama
    from mlx_lm.tuner.lora import LoRALinear
except ImportError as error:  # optional dependencies: the module stays importable, the workload refuses
    mx = mnn = llama = None  # type: ignore[assignment]
    _IMPORT_ERROR: ImportError | None = error
else:
    _IMPORT_ERROR = None

_ModuleBase: Any = mnn.Module if mnn is not None else object
MLX_TEXT_MODELS = ("tinyllama-lora",)
TORCH_PREFIX = "backbone.base_model.model."  # TextScorer → PeftModel → LoraModel → the HF model
PEFT_LORA = {".lora_A.default.weight": ".lora_a", ".lora_B.default.weight": ".lora_b"}
EVAL_BATCH = 64  # rows per forward pass when scoring: attention is (B, heads, L, L)


def require_mlx_lm() -> None:
    """Raise an ImportError that says how to install mlx / mlx-lm when one is missing."""
    require_mlx()
    if _IMPORT_ERROR is not None:
        raise ImportError(
            f"system.backend = 'mlx' with model.name = 'tinyllama-lora' needs mlx-lm, which is not installed "
            f"({_IMPORT_ERROR}). Install it with: pip install mlx-lm, or use system.backend = 'torch'."
        ) from _IMPORT_ERROR


def check_model_name(name: str) -> None:
    if name not in MLX_TEXT_MODELS:
        raise ValueError(
            f"system.backend = 'mlx' runs the text model {' | '.join(MLX_TEXT_MODELS)} (mlx-lm's Llama); "
            f"model.name = {name!r} needs system.backend = 'torch'"
        )


class LlamaScorer(_ModuleBase):
    """Token ids (B, L), right-padded with `pad_token_id` → multi-label logits (B, K)."""

    def __init__(self, args: Any, num_labels: int, pad_token_id: int) -> None:
        super().__init__()
        self.model = llama.LlamaModel(args)
        self.score = mnn.Linear(args.hidden_size, num_labels, bias=False)
        self.pad_token_id = pad_token_id

    def __call__(self, input_ids: Any) -> Any:
        hidden = self.model(input_ids)  # (B, L, H): causal attention, final RMSNorm
        positions = mx.arange(input_ids.shape[1])
        last = (positions * (input_ids != self.pad_token_id)).argmax(axis=1)  # (B,) each row's last real token
        pooled = mx.take_along_axis(hidden, last[:, None, None], axis=1).squeeze(1)  # (B, H)
        return self.score(pooled)  # (B, K)


def _model_args(config: Any) -> Any:
    """mlx-lm's ModelArgs for a transformers LlamaConfig; refuses what LlamaModel would compute differently."""
    rope = dict(getattr(config, "rope_parameters", None) or {})
    if rope.get("rope_type", "default") != "default" or config.hidden_act != "silu":
        raise ValueError(
            f"the MLX Llama supports plain RoPE and SiLU; this backbone has rope {rope} and {config.hidden_act}"
        )
    return llama.ModelArgs(
        model_type="llama",
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers,
        intermediate_size=config.intermediate_size,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads,
        head_dim=config.head_dim,
        rms_norm_eps=config.rms_norm_eps,
        vocab_size=config.vocab_size,
        max_position_embeddings=config.max_position_embeddings,
        attention_bias=config.attention_bias,
        mlp_bias=config.mlp_bias,
        rope_theta=float(rope.get("rope_theta", 10000.0)),
        tie_word_embeddings=False,
    )


def _place(name: str, shape: tuple[int, ...]) -> Placement:
    """(MLX name, torch view, axes, MLX shape) of one exchanged torch parameter."""
    if not name.startswith(TORCH_PREFIX):
        raise ValueError(f"unexpected exchanged parameter {name!r}: not under {TORCH_PREFIX!r}")
    name = name[len(TORCH_PREFIX) :]
    for peft_suffix, mlx_suffix in PEFT_LORA.items():
        if name.endswith(peft_suffix):  # (r, in) → (in, r); (out, r) → (r, out)
            return name[: -len(peft_suffix)] + mlx_suffix, shape, (1, 0), (shape[1], shape[0])
    if name != "score.weight":
        raise ValueError(f"the MLX Llama exchanges LoRA A/B and score.weight; not {name!r}")
    return name, shape, (0, 1), shape


def scorer_from_torch(torch_scorer: torch.nn.Module) -> tuple[Any, ExchangeLayout]:
    """An MLX `LlamaScorer` with `torch_scorer`'s weights (one copy each) and LoRA layers where
    peft put them, and the layout that converts its exchange vector. Only LoRA A/B and the
    head are trainable, as in torch."""
    require_mlx_lm()
    hf_model = torch_scorer.backbone.base_model.model  # LlamaForSequenceClassification with peft's layers
    config = hf_model.config
    if config.model_type != "llama":
        raise ValueError(f"the MLX text model is a Llama; got {config.model_type!r}")
    scorer = LlamaScorer(_model_args(config), config.num_labels, torch_scorer.pad_token_id)
    frozen = [
        (name.replace(".base_layer.", "."), mx.array(p.detach().cpu().numpy()))
        for name, p in hf_model.named_parameters()
        if ".lora_" not in name
    ]
    scorer.load_weights(frozen, strict=True)  # every MLX weight set, every torch weight used
    scorer.freeze()
    lora_modules = {}
    for name, module in hf_model.named_modules():
        if hasattr(module, "lora_A") and "default" in module.lora_A:  # a peft LoRA layer
            linear = _submodule(scorer, name)
            lora = LoRALinear.from_base(
                linear,
                r=module.r["default"],
                dropout=float(getattr(module.lora_dropout["default"], "p", 0.0)),
                scale=float(module.scaling["default"]),
            )
            lora_modules[name] = lora
    scorer.update_modules(tree_unflatten(list(lora_modules.items())))  # new LoRA A/B train, `linear` stays frozen
    scorer.score.unfreeze()
    layout = ExchangeLayout(place_parameters(get_parameters(torch_scorer), _place))
    trainable = {name for name, _ in tree_flatten(scorer.trainable_parameters())}
    if trainable != {e.mlx_name for e in layout.entries}:
        raise ValueError(f"MLX trainable parameters {sorted(trainable)} differ from the exchanged ones")
    return scorer, layout


def _submodule(root: Any, dotted: str) -> Any:
    module = root
    for part in dotted.split("."):
        module = module[int(part)] if part.isdigit() else getattr(module, part)
    return module


def right_padded_lengths(input_ids: np.ndarray, pad_token_id: int) -> np.ndarray:
    """(N,) tokens before each row's padding; raises if a row has padding before a real token
    (the MLX model's causal-only attention would then differ from torch's masked one)."""
    real = input_ids != pad_token_id  # (N, L)
    lengths = real.sum(axis=1)
    ends = (np.arange(input_ids.shape[1]) * real).max(axis=1) + 1  # one past the last real token
    bad = np.flatnonzero((lengths != ends) | (lengths == 0))
    if len(bad):
        raise ValueError(
            f"system.backend = 'mlx' needs right-padded token rows (pad id {pad_token_id} only after the text); "
            f"row {bad[0]} is not"
        )
    return lengths


def masked_bce(model: Any, input_ids: Any, targets: Any) -> Any:
    """`objectives.batch_loss` for multi-label targets (B, K) in {0, 1, −1}: each example's mean
    binary cross-entropy over its scored labels (0 if none), averaged over the batch."""
    scored = targets >= 0
    entries = mnn.losses.binary_cross_entropy(
        model(input_ids), mx.where(scored, targets, 0.0), with_logits=True, reduction="none"
    )
    per_example = (entries * scored).sum(axis=1) / mx.maximum(scored.sum(axis=1), 1)
    return per_example.mean()


class TextWorkload:
    """NGSS token ids and multi-label targets in MLX, and the MLX scorer of `settings`' model,
    built from the torch model the torch trainers build (same seed, same options), so the
    frozen backbone is the same one."""

    compiled = False  # every batch has its own length: compiling would trace each one anew
    eval_batch = EVAL_BATCH

    def __init__(self, data: FederatedData, settings: TrainSettings) -> None:
        check_model_name(settings.model_name)
        require_mlx_lm()
        if not data.multilabel or data.train_x.dim() != 2 or data.train_x.is_floating_point():
            raise ValueError(
                f"model.name = {settings.model_name!r} on MLX trains on token ids (N, L) with multi-label "
                f"targets; this data has inputs {tuple(data.train_x.shape)} {data.train_x.dtype}"
            )
        torch_scorer = create_model(
            settings.model_name, num_classes=settings.num_classes, seed=settings.model_seed, **settings.model_options
        )
        self.model, self.layout = scorer_from_torch(torch_scorer)
        ids = data.train_x.numpy()
        self.lengths = right_padded_lengths(ids, torch_scorer.pad_token_id)
        self.train_x = mx.array(ids.astype(np.int32))  # (N, L)
        targets = data.train_y.numpy().astype(np.float32)  # (N, K), −1 = unscored
        self.train_y = mx.array(targets)
        self.flipped_y = mx.array(np.where(targets >= 0, 1.0 - targets, targets))
        self.loss = masked_bce

    def inputs(self, indices: Sequence[int] | np.ndarray) -> Any:
        """Rows `indices` cut to their longest: (B, max length) int32."""
        indices = np.asarray(indices)
        length = int(self.lengths[indices].max()) if len(indices) else 1
        return self.train_x[:, :length][mx.array(indices.astype(np.int32))]

    def labels(self, indices: np.ndarray, flipped: bool) -> Any:
        return (self.flipped_y if flipped else self.train_y)[mx.array(np.asarray(indices, dtype=np.int32))]
