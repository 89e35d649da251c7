"""Stand-in for A1111 1.10.1 ``extensions-builtin/Lora/lyco_helpers.py``: rebuilding a weight difference from
its factors (plain low rank, CP/Tucker with a core tensor)."""
import torch


def make_weight_cp(t, wa, wb):
    """Core ``t`` [r, r, k, k] with factors ``wa`` [r, out] and ``wb`` [r, in] -> [out, in, k, k]."""
    return torch.einsum('a b k l, a o, b i -> o i k l', t, wa, wb)


def rebuild_conventional(up, down, shape, dyn_dim=None):
    up = up.reshape(up.size(0), -1)
    down = down.reshape(down.size(0), -1)
    if dyn_dim is not None:
        up, down = up[:, :dyn_dim], down[:dyn_dim, :]
    return (up @ down).reshape(shape)


def rebuild_cp_decomposition(up, down, mid):
    up = up.reshape(up.size(0), -1)
    down = down.reshape(down.size(0), -1)
    return torch.einsum('a b k l, o a, b i -> o i k l', mid, up, down)
