"""Keys and values of past positions, kept between generation steps so each new token costs one position."""

import torch


class LayerKVCache:
    """Preallocated ``[batch, kv_heads, max_length, head_dim]`` keys and values of one attention layer."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor):
        self.keys = keys
        self.values = values

    def update(self, keys: torch.Tensor, values: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new positions from ``start`` on; return keys and values of every position so far."""
        end = start + keys.shape[2]
        self.keys[:, :, start:end] = keys
        self.values[:, :, start:end] = values
        return self.keys[:, :, :end], self.values[:, :, :end]


class KVCache:
    """One ``LayerKVCache`` per block, and how many positions they hold."""

    def __init__(
        self,
        n_layer: int,
        batch_size: int,
        n_head_kv: int,
        max_length: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
    ):
        shape = (batch_size, n_head_kv, max_length, head_dim)
        self.layers = [
            LayerKVCache(torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))
            for _ in range(n_layer)
        ]
        self.max_length = max_length
        self.length = 0
