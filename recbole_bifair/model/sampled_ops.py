"""Sampled row products without materialising the gathered rows (ALGORITHMS.md section 3).

The InfoNCE of AlphaRec (Sheng et al. 2024, Eq. 4) scores K sampled negatives per sample:
s[b, k] = rows[b] . table[index[b, k]]. Gathering ``table[index]`` writes a [B, K, D] tensor
(4096 x 256 x 64 floats = 268 MB) and its backward scatters one back. Here the product and its
two gradients are three kernels that read the rows where they are:

- :class:`SampledDot`   s[b, k] = rows[b] . table[index[b, k]]       (SDDMM, ``sampled_addmm``)
- :class:`GatherSum`    out[b] = sum_k w[b, k] table[index[b, k]]    (``embedding_bag``)
- :class:`ScatterSum`   out[i] = sum_{(b, k): index[b, k] = i} w[b, k] rows[b]
                        (``embedding_bag`` over the pairs sorted by column)

Each is linear in each input and the derivatives of each are the other two, so every order of
derivative stays gather-free, and each has a ``vmap`` rule that folds the batch into the rows
(the batched backward of ``group_grad_method: batched``, as :mod:`sparse_ops` does).
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F


class SampledPairs:
    """The (row b, column index[b, k]) pairs of a [B, K] index matrix, over ``n_columns`` columns.

    Holds what the kernels need and builds it once per batch: the CSR mask of the SDDMM and,
    on first use, the column-sorted order of the pairs for :class:`ScatterSum`.
    """

    def __init__(self, index: torch.Tensor, n_columns: int):
        self.index = index
        self.n_rows, self.width = index.shape
        self.n_columns = n_columns
        self._column_order = None
        self._csr = {}
        self._folded = {}

    def csr_mask(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(CSR [B, n_columns] with the pairs as pattern, permutation to undo a row sort or None)."""
        if dtype not in self._csr:
            index, restore = self.index, None
            if index.is_cuda:  # cuSPARSE's SDDMM wants sorted column indices within each row
                index, order = torch.sort(index, dim=1)
                restore = torch.argsort(order, dim=1)
            count = self.n_rows * self.width
            row_pointers = torch.arange(0, count + 1, self.width, device=index.device)
            values = torch.zeros(count, dtype=dtype, device=index.device)
            with warnings.catch_warnings():  # "CSR support is in beta" (torch's own, once per process)
                warnings.simplefilter("ignore", UserWarning)
                mask = torch.sparse_csr_tensor(
                    row_pointers, index.reshape(-1), values, (self.n_rows, self.n_columns),
                    check_invariants=False,  # built here from in-range indices
                )  # fmt: skip
            self._csr[dtype] = (mask, restore)
        return self._csr[dtype]

    def column_order(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(order, source rows, offsets): pairs sorted by column, their row b, each column's start."""
        if self._column_order is None:
            flat = self.index.reshape(-1)
            key = flat.int() if self.n_columns < 2**31 else flat
            order = torch.sort(key, stable=False)[1]
            count = torch.bincount(flat, minlength=self.n_columns)
            offsets = torch.cumsum(count, 0) - count
            self._column_order = (order, torch.div(order, self.width, rounding_mode="floor"), offsets)
        return self._column_order

    def folded(self, batch: int) -> SampledPairs:
        """The pairs of ``batch`` stacked copies: rows n*B + b, columns n*n_columns + index."""
        if batch not in self._folded:
            shift = torch.arange(batch, device=self.index.device).view(-1, 1, 1) * self.n_columns
            self._folded[batch] = SampledPairs((self.index + shift).reshape(-1, self.width), batch * self.n_columns)
        return self._folded[batch]


def sampled_dot_values(rows: torch.Tensor, table: torch.Tensor, pairs: SampledPairs) -> torch.Tensor:
    """s[b, k] = rows[b] . table[index[b, k]] through ``torch.sparse.sampled_addmm``; [B, K]."""
    if rows.dtype not in (torch.float32, torch.float64):  # no half-precision SDDMM kernel on CPU
        rows, table = rows.float(), table.float()
    if pairs.width > pairs.n_columns:  # more pairs than dense entries (sampled_addmm refuses): tiny
        return torch.gather(rows @ table.to(rows.dtype).T, 1, pairs.index)
    mask, restore = pairs.csr_mask(rows.dtype)
    values = torch.sparse.sampled_addmm(mask, rows, table.to(rows.dtype).T, beta=0.0).values()
    values = values.view(pairs.n_rows, pairs.width)
    return values if restore is None else torch.gather(values, 1, restore)


def gather_sum_values(table: torch.Tensor, weights: torch.Tensor, pairs: SampledPairs) -> torch.Tensor:
    """out[b] = sum_k w[b, k] table[index[b, k]]; [B, D]."""
    return F.embedding_bag(pairs.index, table, per_sample_weights=weights.to(table.dtype), mode="sum")


def scatter_sum_values(rows: torch.Tensor, weights: torch.Tensor, pairs: SampledPairs) -> torch.Tensor:
    """out[i] = sum over the pairs (b, k) with index[b, k] = i of w[b, k] rows[b]; [n_columns, D]."""
    order, source_rows, offsets = pairs.column_order()
    sorted_weights = weights.reshape(-1)[order].to(rows.dtype)
    return F.embedding_bag(source_rows, rows, offsets, per_sample_weights=sorted_weights, mode="sum")


def _kernel(name: str, doc: str, values, grad_first, grad_second, output_rows) -> type:
    """An ``autograd.Function`` of (first, second, pairs): ``values`` forward, the gradients
    w.r.t. ``first`` and ``second`` from ``grad_first`` / ``grad_second`` (first, second, grad,
    pairs), and a ``vmap`` rule that stacks the N copies of each input along its rows (the
    unbatched one expanded) and runs ONE kernel on the folded pairs (:meth:`SampledPairs.folded`)."""

    def forward(first, second, pairs):
        return values(first, second, pairs)

    def setup_context(ctx, inputs, output):
        first, second, pairs = inputs
        ctx.save_for_backward(first, second)
        ctx.pairs = pairs

    def backward(ctx, grad):
        first, second = ctx.saved_tensors
        return (
            grad_first(first, second, grad, ctx.pairs) if ctx.needs_input_grad[0] else None,
            grad_second(first, second, grad, ctx.pairs) if ctx.needs_input_grad[1] else None,
            None,
        )

    def vmap(info, in_dims, first, second, pairs):
        first, second = (
            tensor.unsqueeze(0).expand(info.batch_size, *tensor.shape) if dim is None else tensor.movedim(dim, 0)
            for tensor, dim in zip((first, second), in_dims[:2], strict=True)
        )
        out = kernel.apply(first.flatten(0, 1), second.flatten(0, 1), pairs.folded(info.batch_size))
        return out.view(info.batch_size, output_rows(pairs), *out.shape[1:]), 0

    methods = {"forward": forward, "setup_context": setup_context, "backward": backward, "vmap": vmap}
    kernel = type(name, (torch.autograd.Function,), {"__doc__": doc, **{k: staticmethod(f) for k, f in methods.items()}})
    return kernel


# Each kernel is linear in each input; the derivatives of each are the other two.
SampledDot = _kernel("SampledDot", "s[b, k] = rows[b] . table[index[b, k]]", sampled_dot_values,
                     lambda rows, table, grad, pairs: GatherSum.apply(table, grad, pairs),
                     lambda rows, table, grad, pairs: ScatterSum.apply(rows, grad, pairs), lambda pairs: pairs.n_rows)
GatherSum = _kernel("GatherSum", "out[b] = sum_k w[b, k] table[index[b, k]]", gather_sum_values,
                    lambda table, weights, grad, pairs: ScatterSum.apply(grad, weights, pairs),
                    lambda table, weights, grad, pairs: SampledDot.apply(grad, table, pairs), lambda pairs: pairs.n_rows)
ScatterSum = _kernel("ScatterSum", "out[i] = sum_{(b, k): index[b, k] = i} w[b, k] rows[b]", scatter_sum_values,
                     lambda rows, weights, grad, pairs: GatherSum.apply(grad, weights, pairs),
                     lambda rows, weights, grad, pairs: SampledDot.apply(rows, grad, pairs), lambda pairs: pairs.n_columns)


def sampled_dot(rows: torch.Tensor, table: torch.Tensor, index: torch.Tensor | SampledPairs) -> torch.Tensor:
    """[B, K] scores rows[b] . table[index[b, k]] without the [B, K, D] gather (see module doc)."""
    pairs = index if isinstance(index, SampledPairs) else SampledPairs(index, table.shape[0])
    return SampledDot.apply(rows, table, pairs)
