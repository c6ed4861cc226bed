"""What every format reader checks and reorders the same way: tensor shapes, group indices, interleaved columns."""

from __future__ import annotations

import torch

from worker.errors import CheckpointError


def check_shapes(prefix: str, tensors: dict[str, torch.Tensor], expected: dict[str, tuple],
                 what: str) -> None:
    for name, shape in expected.items():
        actual = tuple(tensors[name].shape)
        if actual != tuple(shape):
            raise CheckpointError(f"tensor {prefix}.{name} has shape {actual}, expected {tuple(shape)} for {what}")


def check_g_idx(prefix: str, g_idx: torch.Tensor, n_groups: int, name: str = "g_idx") -> None:
    if int(g_idx.max()) >= n_groups or int(g_idx.min()) < 0:
        raise CheckpointError(f"tensor {prefix}.{name} names groups outside 0..{n_groups - 1}")


def reverse_columns(values: torch.Tensor, order: list[int]) -> torch.Tensor:
    """Columns stored in blocks of len(order) with stored column i of a block being true column order[i]:
    the columns in their true order."""
    per = len(order)
    inverse = [order.index(j) for j in range(per)]
    cols = values.shape[1]
    index = (torch.arange(cols).view(-1, per) // per * per + torch.tensor(inverse)).reshape(-1)
    return values[:, index]
