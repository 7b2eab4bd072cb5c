"""Per-example gradient clipping in one backward pass ("book-keeping", Bu et al. 2023).

DP-SGD needs every example's gradient clipped to norm C before the batch is summed.
Opacus's ghost clipping finds the norms in one backward pass and needs a second for the
clipped sum; here one `autograd.grad` with respect to the layer *outputs* is enough:
from each layer's input and output gradients follow the per-example norms (ghost norms
for Linear, exact per-example gradients for Conv2d) and the clipped sum, and no
parameter gradient is ever computed unclipped. Only Linear (2-D inputs) and plain
Conv2d layers can be bounded this way; anything else raises `UnsupportedLayerError`,
which `differential_privacy` turns into a refusal to train.

    clipper = BookkeepingClipper(model, max_grad_norm=1.0)
    mean_loss = clipper.backward(x, y)   # each parameter's .grad = Σ_i c_i ∇ℓ_i (no noise yet)

Augmentation multiplicity (De et al. 2022, `privacy.augmentations`): with `multiplicity` = K the
batch holds K augmented copies of each example, example-major (rows i·K … i·K + K − 1), and the
gradient clipped is each example's mean over its copies, (1/K) Σ_k ∇ℓ_ik: one example still moves
the sum by at most C, so the accounting is unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from engine import objectives

# Opacus's clip factor is min(1, C / (norm + 1e-6)) (DPOptimizer.clip_and_accumulate); same here.
CLIP_EPSILON = 1e-6


class UnsupportedLayerError(RuntimeError):
    """The model has a layer (or a use of one) whose per-example gradient this cannot bound."""


# Per-example gradients of one layer, compactly: (per-example squared norms (B,), and a
# function from clip factors c (B,) to [(parameter, Σ_i c_i · per-example gradient)]).
_LayerGradients = tuple[torch.Tensor, Callable[[torch.Tensor], list[tuple[nn.Parameter, torch.Tensor]]]]


def supported_layers(model: nn.Module) -> list[tuple[str, nn.Linear | nn.Conv2d]]:
    """The layers holding `model`'s trainable parameters, each a Linear or a plain Conv2d.

    Raises UnsupportedLayerError naming any other layer with trainable parameters, or a parameter
    shared by two layers: its per-example gradient would not be seen whole by one layer.
    """
    layers, owners = [], {}
    for name, module in model.named_modules():
        trainable = [p for p in module.parameters(recurse=False) if p.requires_grad]
        if not trainable:
            continue
        label = f"{name or 'the model itself'} ({type(module).__name__})"
        if isinstance(module, nn.Conv2d):
            if module.groups != 1 or module.padding_mode != "zeros" or isinstance(module.padding, str):
                raise UnsupportedLayerError(f"bookkeeping clipping supports Conv2d with groups=1, int zero padding; not {label}")
        elif not isinstance(module, nn.Linear):
            raise UnsupportedLayerError(f"bookkeeping clipping does not support layer {label}; use ghost or hooks")
        for parameter in trainable:
            if id(parameter) in owners:
                raise UnsupportedLayerError(f"bookkeeping clipping: {label} shares a parameter with {owners[id(parameter)]}")
            owners[id(parameter)] = label
        layers.append((name, module))
    if not layers:
        raise UnsupportedLayerError(f"{type(model).__name__} has no trainable parameters to train privately")
    return layers


def _example_means(rows: torch.Tensor, multiplicity: int) -> torch.Tensor:
    """(B, ...) each example's mean over its `multiplicity` consecutive rows of (B·K, ...); the rows
    themselves, uncopied, when K = 1 (every DP-SGD step without augmentation)."""
    return rows if multiplicity == 1 else rows.view(-1, multiplicity, *rows.shape[1:]).mean(1)


def _layer_gradients(
    layer: nn.Linear | nn.Conv2d, inputs: torch.Tensor, grads: torch.Tensor, multiplicity: int = 1
) -> _LayerGradients:
    """Per-example gradients of `layer` from its input (B·K, ...) and the per-row loss gradients
    w.r.t. its output (B·K, ...), each example's the mean over its K rows (`multiplicity`): ghost
    norms for Linear, materialised for Conv2d. Norms and clip factors are per example, (B,)."""
    k = multiplicity
    if isinstance(layer, nn.Linear):
        if inputs.dim() != 2:
            raise UnsupportedLayerError(f"bookkeeping clipping needs (B, features) inputs to Linear, got {tuple(inputs.shape)}")
        if k == 1:
            weight_norms = inputs.square().sum(1) * grads.square().sum(1)  # ‖g_i a_iᵀ‖² = ‖a_i‖²‖g_i‖²
        else:  # ‖(1/K) Σ_k g_ik a_ikᵀ‖² = (1/K²) Σ_k,l (g_ik·g_il)(a_ik·a_il): two (B, K, K) Gram matrices
            a, g = inputs.view(-1, k, inputs.shape[1]), grads.view(-1, k, grads.shape[1])
            weight_norms = ((g @ g.transpose(1, 2)) * (a @ a.transpose(1, 2))).sum((1, 2)) / k**2
        bias_grads = _example_means(grads, k)  # (B, out)

        def clipped_weight(factors: torch.Tensor) -> torch.Tensor:
            rows = factors.repeat_interleave(k) / k if k > 1 else factors
            return (grads * rows[:, None]).T @ inputs  # (out, in) = Σ_i c_i (1/K) Σ_k g_ik a_ikᵀ
    else:
        # Per-example weight gradients as one convolution's weight gradient with the batch as
        # groups: (1, B·C, H, W) input, (1, B·C_out, h, w) output gradient. On CPU this is
        # ~2.5x faster than unfold (B, C·k·k, L) + bmm, which copies the input k·k times.
        batch, out_channels = len(inputs), layer.out_channels
        per_example = torch.nn.grad.conv2d_weight(
            inputs.reshape(1, -1, *inputs.shape[2:]),
            (batch * out_channels, *layer.weight.shape[1:]),
            grads.reshape(1, -1, *grads.shape[2:]),
            stride=layer.stride, padding=layer.padding, dilation=layer.dilation, groups=batch,
        ).view(batch, -1)  # (B·K, C_out·C·kh·kw)
        per_example = _example_means(per_example, k)  # (B, ...): each example's mean over its K rows
        weight_norms = torch.linalg.vector_norm(per_example, dim=1).square()
        bias_grads = _example_means(grads.sum((2, 3)), k)  # (B, C_out)

        def clipped_weight(factors: torch.Tensor) -> torch.Tensor:
            return (factors @ per_example).view_as(layer.weight)  # Σ_i c_i ∇W_i

    terms, norms = [], torch.zeros(len(inputs) // k, dtype=grads.dtype)
    if layer.weight.requires_grad:
        terms.append((layer.weight, clipped_weight))
        norms = norms + weight_norms
    if layer.bias is not None and layer.bias.requires_grad:
        terms.append((layer.bias, lambda factors: factors @ bias_grads))
        norms = norms + bias_grads.square().sum(1)
    return norms, lambda factors: [(parameter, clipped(factors)) for parameter, clipped in terms]


class BookkeepingClipper:
    """Per-example clipping in one backward pass (book-keeping; Bu et al. 2023).

    Forward hooks keep each layer's input and output; one `autograd.grad` of the summed
    loss w.r.t. the outputs gives every example's output gradients and computes no
    parameter gradient. Per-example norms and the clipped sum follow from those alone.
    """

    def __init__(self, model: nn.Module, max_grad_norm: float) -> None:
        self.model, self.max_grad_norm = model, max_grad_norm
        self.layers = supported_layers(model)
        self.parameters = [p for _, layer in self.layers for p in layer.parameters(recurse=False) if p.requires_grad]
        self._captured: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}

    def _capture(self, layer: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if layer in self._captured:  # its per-example gradient would span several calls
            raise UnsupportedLayerError(f"bookkeeping clipping: {type(layer).__name__} is called twice in one forward pass")
        self._captured[layer] = (inputs[0].detach(), output)

    def backward(self, x: torch.Tensor, y: torch.Tensor, multiplicity: int = 1) -> torch.Tensor:
        """Set each trainable parameter's `.grad` to Σ_i c_i ∇ℓ_i (not yet noised or averaged),
        c_i = min(1, C / (‖∇ℓ_i‖ + 1e-6)); return the batch's mean loss (0 for an empty batch).
        `multiplicity` K: `x` holds K rows per example, example-major, and ℓ_i is the mean of its
        rows' losses (augmentation multiplicity); `y` then has one label per row."""
        for parameter in self.parameters:  # only what this batch sets may reach the optimizer
            parameter.grad = None
        if multiplicity < 1 or len(x) % multiplicity or len(y) != len(x):
            raise ValueError(f"{len(x)} rows and {len(y)} labels are not {multiplicity} rows of each example")
        if len(x) == 0:
            self._fill_missing_grads()
            return torch.zeros(())
        handles = [layer.register_forward_hook(self._capture) for _, layer in self.layers]
        try:
            loss = objectives.batch_loss(self.model(x), y, reduction="sum")
        finally:
            for handle in handles:
                handle.remove()
            captured, self._captured = self._captured, {}
        used = [(layer, *captured[layer]) for _, layer in self.layers if layer in captured]
        output_grads = torch.autograd.grad(
            loss, [output for _, _, output in used], allow_unused=True, materialize_grads=True
        )  # per-example: the loss is a sum over examples
        gradients = [
            _layer_gradients(layer, inputs, g, multiplicity) for (layer, inputs, _), g in zip(used, output_grads)
        ]
        norms = sum((n for n, _ in gradients), torch.zeros(len(x) // multiplicity)).sqrt()  # (B,) whole model
        factors = (self.max_grad_norm / (norms + CLIP_EPSILON)).clamp(max=1.0)
        for _, clipped_sums in gradients:
            for parameter, clipped in clipped_sums(factors):
                parameter.grad = clipped
        self._fill_missing_grads()
        return loss.detach() / len(x)

    def _fill_missing_grads(self) -> None:
        """Zero gradients where none was set: an empty batch, or a layer the forward pass skipped."""
        for parameter in self.parameters:
            if parameter.grad is None:
                parameter.grad = torch.zeros_like(parameter)
