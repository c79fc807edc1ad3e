"""Keys and values of past positions, kept between generation steps so each new token costs one position."""

import torch


class LayerKVCache:
    """Keys and values ``[batch, kv_heads, max_length, head_dim]`` of one attention layer.

    Allocated on the first update, in the dtype and on the device of the keys it is given (which autocast
    may have made lower-precision than the parameters).
    """

    def __init__(self, max_length: int):
        self.max_length = max_length
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None

    def update(self, keys: torch.Tensor, values: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new positions from ``start`` on; return keys and values of every position so far."""
        if self.keys is None:
            shape = (*keys.shape[:2], self.max_length, keys.shape[3])
            self.keys, self.values = keys.new_zeros(shape), values.new_zeros(shape)
        end = start + keys.shape[2]
        self.keys[:, :, start:end] = keys
        self.values[:, :, start:end] = values
        return self.keys[:, :, :end], self.values[:, :, :end]


class KVCache:
    """One ``LayerKVCache`` per block, and how many positions they hold."""

    def __init__(self, n_layer: int, max_length: int):
        self.layers = [LayerKVCache(max_length) for _ in range(n_layer)]
        self.length = 0
