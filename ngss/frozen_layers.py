"""LoRA on the top layers only: the frozen layers below run once per response, and are cached.

With `model.lora_layers = N` only the top N transformer layers carry LoRA. Everything under
them (embeddings and the lower layers) has no trainable parameter, so its output for a response
never changes during a run: `LayerSplit` computes it once per distinct response and keeps it in
a `HiddenStateCache`, and every later forward pass runs only the top N layers on the cached
states. Backward stops there as well. On MiniLM (6 layers) with N = 2 a training step costs
about a third of LoRA on every layer (`python -m bench.ngss recipe` measures it).

What a cached forward pass computes:
- The frozen part runs without dropout, in training too: it is a fixed feature extractor, and a
  cache can only hold one value. With N = every layer nothing is frozen and nothing changes.
- Each response's frozen states are computed alone at its own length (one row, no padding), so
  the value does not depend on which batch or process first met the response, nor on whether it
  was cached: a run with the cache full or empty computes the same numbers.
- The top layers see the cached states padded with zeros to the batch's longest response; the
  attention mask hides the padding, as it does for embedded padding tokens.

The cache is per process and bounded (`CACHE_BYTES`); a response that does not fit is computed
again when it comes back, with the same result. Deep copies of a model share its cache (the
frozen weights are the same), and a pickled model arrives with an empty one.
"""

from __future__ import annotations

from contextlib import contextmanager
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence
from transformers import PreTrainedModel
from transformers.masking_utils import create_bidirectional_mask, create_causal_mask

from engine.objectives import row_lengths

CACHE_BYTES = 512 * 2**20  # per process: MiniLM's states for ~9,000 responses of 38 tokens


def transformer_layers(model: PreTrainedModel) -> nn.ModuleList:
    """The stack of transformer layers of a BERT or Llama sequence classifier."""
    if hasattr(model, "bert"):
        return model.bert.encoder.layer
    if hasattr(model, "model") and hasattr(model.model, "layers"):
        return model.model.layers
    raise ValueError(f"model.lora_layers: no layer stack known for {type(model).__name__}")


class HiddenStateCache:
    """The frozen layers' output per response (its token ids as bytes → (length, hidden) float32)."""

    def __init__(self, budget_bytes: int = CACHE_BYTES) -> None:
        self.budget_bytes = budget_bytes
        self.rows: dict[bytes, torch.Tensor] = {}
        self.bytes = 0

    def get(self, key: bytes) -> torch.Tensor | None:
        return self.rows.get(key)

    def put(self, key: bytes, states: torch.Tensor) -> None:
        size = states.numel() * states.element_size()
        if self.bytes + size <= self.budget_bytes:
            self.rows[key] = states
            self.bytes += size

    def __deepcopy__(self, memo: dict) -> HiddenStateCache:
        return self  # copies of a model share frozen weights, so they share their states

    def __reduce__(self) -> tuple:
        return HiddenStateCache, (self.budget_bytes,)  # another process fills its own


@contextmanager
def _without_dropout(modules: list[nn.Module]) -> Iterator[None]:
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)


class LayerSplit:
    """A BERT encoder or Llama decoder cut under its top `top` layers (not a Module: it holds no weights
    of its own, only references into `model`, which the owning scorer registers)."""

    def __init__(self, model: PreTrainedModel, top: int) -> None:
        layers = transformer_layers(model)
        if not 1 <= top <= len(layers):
            raise ValueError(f"model.lora_layers must be between 1 and the model's {len(layers)} layers; got {top}")
        self.model, self.layers, self.frozen = model, layers, len(layers) - top
        self.llama = not hasattr(model, "bert")
        self.base = model.model if self.llama else model.bert
        self.cache = HiddenStateCache()

    # --- the architecture's own steps, as its Hugging Face forward takes them
    def _embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.base.embed_tokens(input_ids) if self.llama else self.base.embeddings(input_ids=input_ids)

    def _run(self, hidden: torch.Tensor, not_pad: torch.Tensor, layers: list[nn.Module]) -> torch.Tensor:
        config = self.model.config
        if not self.llama:
            mask = create_bidirectional_mask(config=config, inputs_embeds=hidden, attention_mask=not_pad)
            for layer in layers:
                hidden = layer(hidden, mask)
            return hidden
        positions = torch.arange(hidden.shape[1], device=hidden.device).unsqueeze(0)
        mask = create_causal_mask(
            config=config, inputs_embeds=hidden, attention_mask=not_pad, cache=None, position_ids=positions
        )
        rotary = self.base.rotary_emb(hidden, position_ids=positions)
        for layer in layers:
            hidden = layer(hidden, attention_mask=mask, position_embeddings=rotary, position_ids=positions)
        return hidden

    # --- the split
    def frozen_states(self, tokens: torch.Tensor) -> torch.Tensor:
        """(length, hidden): one response's states under the top layers, unpadded, without dropout."""
        row = tokens.unsqueeze(0)
        below = [self.base.embeddings if not self.llama else self.base.embed_tokens, *self.layers[: self.frozen]]
        with torch.no_grad(), _without_dropout(below):
            hidden = self._embed(row)
            return self._run(hidden, torch.ones_like(row), list(self.layers[: self.frozen]))[0]

    def cached_states(self, input_ids: torch.Tensor, lengths: list[int]) -> torch.Tensor:
        """(B, L, hidden): each row's frozen states from the cache (computed on a miss), zero-padded."""
        rows = []
        for ids, length in zip(input_ids, lengths):
            tokens = ids[:length]
            key = tokens.numpy().tobytes()
            states = self.cache.get(key)
            if states is None:
                states = self.frozen_states(tokens)
                self.cache.put(key, states)
            rows.append(states)
        return pad_sequence(rows, batch_first=True)

    def last_hidden(self, input_ids: torch.Tensor, not_pad: torch.Tensor) -> torch.Tensor:
        """(B, L, hidden): what the Hugging Face base model returns as its last hidden states."""
        lengths = [max(int(n), 1) for n in row_lengths(not_pad)]
        hidden = self.cached_states(input_ids.cpu(), lengths).to(input_ids.device)
        hidden = self._run(hidden, not_pad.long(), list(self.layers[self.frozen :]))
        return self.base.norm(hidden) if self.llama else hidden

    def head_logits(self, hidden: torch.Tensor, not_pad: torch.Tensor, head: nn.Module) -> torch.Tensor:
        """(B, K): the Hugging Face classifier's own reading of `hidden`: BERT's pooler over [CLS], then
        dropout and the classifier; Llama's score at the last non-pad token."""
        if not self.llama:
            return head(self.model.dropout(self.base.pooler(hidden)))
        positions = torch.arange(hidden.shape[1], device=hidden.device)
        last = (positions * not_pad).argmax(dim=1)
        return head(hidden[torch.arange(hidden.shape[0], device=hidden.device), last])
