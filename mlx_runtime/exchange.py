"""The exchange format on MLX: the flat float32 torch vector of `model.flatten(get_parameters(m))`
to and from an MLX model's parameters (`ExchangeLayout`, one `_Entry` per torch parameter: its
MLX name and the transpose that gives MLX's layout), and whether MLX is installed here.

    layout = ExchangeLayout(place_parameters(torch_params, place))
    load_flat(mlx_model, layout, flat); flatten_mlx(mlx_model, layout, out=row)
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from model import Parameters

try:
    import mlx.core as mx
    import mlx.nn as mnn
    import mlx.optimizers as optim
    from mlx.utils import tree_flatten, tree_map, tree_unflatten  # noqa: F401 (tree_map: the trainer's)
except ImportError as error:  # optional dependency: the module stays importable, trainers refuse
    mx = mnn = optim = None  # type: ignore[assignment]
    _IMPORT_ERROR: ImportError | None = error
else:
    _IMPORT_ERROR = None

_ModuleBase: Any = mnn.Module if mnn is not None else object
EVAL_BATCH = 1000
MlxParameters = dict[str, Any]  # {MLX parameter name: mx.array in MLX layout}


def available() -> bool:
    """Whether MLX can be imported here."""
    return _IMPORT_ERROR is None


def install_hint() -> str:
    if platform.system() == "Darwin":
        return "pip install mlx"
    return "pip install 'mlx[cpu]'"


def require_mlx() -> None:
    """Raise an ImportError that says how to install MLX when it is missing."""
    if _IMPORT_ERROR is not None:
        raise ImportError(
            f"system.backend = 'mlx' needs the mlx package, which is not installed ({_IMPORT_ERROR}). "
            f"Install it with: {install_hint()}, or use system.backend = 'torch'."
        ) from _IMPORT_ERROR


# -- the exchange format <-> MLX parameters ------------------------------------------------

# Where one torch parameter goes in MLX: (MLX name, torch view, axes, MLX shape); see `_Entry`.
Placement = tuple[str, tuple[int, ...], tuple[int, ...], tuple[int, ...]]


@dataclass(frozen=True)
class _Entry:
    """Where one parameter sits in the flat vector and how its layout changes for MLX."""

    name: str  # the exchanged (clean torch) name
    mlx_name: str  # its path in the MLX model's parameter tree
    offset: int
    size: int
    torch_view: tuple[int, ...]  # the flat slice viewed so that one transpose gives MLX's layout
    axes: tuple[int, ...]  # torch_view.transpose(axes) is MLX's layout (reshaped to mlx_shape)
    mlx_shape: tuple[int, ...]

    @property
    def mlx_view(self) -> tuple[int, ...]:
        return tuple(self.torch_view[a] for a in self.axes)

    @property
    def inverse_axes(self) -> tuple[int, ...]:
        return tuple(int(a) for a in np.argsort(self.axes))


def place_parameters(
    torch_params: Parameters, place: Callable[[str, tuple[int, ...]], Placement]
) -> list[_Entry]:
    """The entries of a torch model's exchanged parameters, in its order; `place(name, shape)`
    says where each goes in MLX."""
    entries, offset = [], 0
    for name, tensor in torch_params.items():
        mlx_name, view, axes, mlx_shape = place(name, tuple(tensor.shape))
        entries.append(_Entry(name, mlx_name, offset, tensor.numel(), view, axes, mlx_shape))
        offset += tensor.numel()
    return entries


class ExchangeLayout:
    """Converts between the flat torch exchange vector (P,) and an MLX model's parameters."""

    def __init__(self, entries: Sequence[_Entry]) -> None:
        self.entries = tuple(entries)
        self.size = sum(e.size for e in self.entries)

    def to_mlx(self, flat: torch.Tensor) -> MlxParameters:
        """(P,) float32 torch vector → {MLX name: mx.array in MLX layout}; one copy per parameter."""
        if flat.shape != (self.size,) or flat.dtype != torch.float32:
            raise ValueError(f"expected a float32 vector of {self.size} values, got {tuple(flat.shape)} {flat.dtype}")
        values = flat.detach().cpu().numpy()  # a view of the tensor's memory
        return {
            e.mlx_name: mx.array(values[e.offset : e.offset + e.size].reshape(e.torch_view).transpose(e.axes)).reshape(
                e.mlx_shape
            )
            for e in self.entries
        }

    def to_flat(self, params: MlxParameters, out: torch.Tensor | None = None) -> torch.Tensor:
        """{MLX name: mx.array} → (P,) float32 torch vector, written into `out` when given
        (one copy, MLX buffer → `out`)."""
        out = torch.empty(self.size) if out is None else out
        if out.shape != (self.size,) or out.dtype != torch.float32 or not out.is_contiguous():
            raise ValueError(f"out must be a contiguous float32 vector of {self.size} values")
        target = out.numpy()  # a view: writing it writes `out`
        mx.eval(list(params.values()))
        for e in self.entries:
            source = np.asarray(params[e.mlx_name]).reshape(e.mlx_view).transpose(e.inverse_axes)  # views
            target[e.offset : e.offset + e.size].reshape(e.torch_view)[...] = source
        return out


def load_flat(model: Any, layout: ExchangeLayout, flat: torch.Tensor) -> None:
    """Set an MLX model's parameters from the flat exchange vector."""
    model.update(tree_unflatten(list(layout.to_mlx(flat).items())))


def flatten_mlx(model: Any, layout: ExchangeLayout, out: torch.Tensor | None = None) -> torch.Tensor:
    """An MLX model's parameters as the flat exchange vector (into `out` when given)."""
    return layout.to_flat(dict(tree_flatten(model.trainable_parameters())), out)
