"""Curvature operators: a small base class, a dense operator for tests, and the loss Hessian.

A ``CurvatureOperator`` is a symmetric [P, P] linear map known only through products. Subclasses
implement ``_matmat(V [P, k]) -> [P, k]``; ``matvec``, ``matmat``, ``@``, ``shape``, ``dtype`` and a
scipy ``LinearOperator`` view come from the base (after curvlinops' operator design).

``HessianOperator`` is the Hessian of the loss ``loss_fn`` defines on all the data, whatever the
batching, chunking or sharding (skipkern.hessian.reduction): for a "mean" loss

    L(theta) = sum_b d_b * loss_fn(model(x_b; theta), y_b) / sum_b d_b

over batches b with mean denominators d_b (rows, or counted targets for cross-entropy with
ignore_index / class weights), for a "sum" loss L = sum_b loss_fn(model(x_b), y_b). Products run
through one of two HVP backends:
"fused" (skipkern.hessian.hvp_fused: analytic R-op of a SkipMLP carrying all k directions at once) or
"generic" (skipkern.hessian.hvp_generic: torch.func forward-over-reverse, vmapped over k). Every
product is one pass over the data.

Data parallel (``process_group``, default: the torch.distributed default group when initialised):
each rank holds its own shard of the data and one all-reduce per product gives the exact mean over
all shards (skipkern.hessian.sharding). Construction checks collectively that every rank has the
same P, a non-empty shard and a backend that runs on its device.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Any, Iterable, Iterator, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor, nn

from skipkern import distributed as sd
from skipkern.hessian import hvp_fused, hvp_generic, sharding
from skipkern.hessian.reduction import measure_reduction, resolve_reduction

log = logging.getLogger("skipkern")

__all__ = ["CurvatureOperator", "DenseOperator", "HessianOperator", "HVP_BACKENDS", "DEFAULT_MEMORY_BUDGET"]

HVP_BACKENDS = ("auto", "fused", "generic")
DEFAULT_MEMORY_BUDGET = 1 << 30  # bytes of working memory for one batch of directions (1 GiB)


class CurvatureOperator:
    """Base of the symmetric [P, P] operators. Subclasses set ``_shape``, ``_dtype``, ``_device`` and
    implement ``_matmat``. ``num_matmat`` counts products (each one batch of vectors)."""

    _shape: tuple[int, int]
    _dtype: torch.dtype
    _device: torch.device

    def __init__(self) -> None:
        self.num_matmat = 0
        self.num_vectors = 0

    @property
    def shape(self) -> tuple[int, int]:
        return self._shape

    @property
    def dtype(self) -> torch.dtype:
        """dtype the products are computed in (vectors are cast to it)."""
        return self._dtype

    @property
    def device(self) -> torch.device:
        return self._device

    def _matmat(self, V: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _as_tensor(self, x: Any, name: str) -> Tensor:
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(x)
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}")
        if not (x.dtype.is_floating_point):
            raise TypeError(f"{name} must be floating point, got {x.dtype}")
        return x.to(device=self._device, dtype=self._dtype)

    def matvec(self, v: Tensor) -> Tensor:
        """v [P] -> A v [P] (in ``self.dtype``)."""
        v = self._as_tensor(v, "v")
        if v.shape != (self._shape[1],):
            raise ValueError(f"v must have shape [{self._shape[1]}], got {tuple(v.shape)}")
        return self.matmat(v[:, None])[:, 0]

    def matmat(self, V: Tensor) -> Tensor:
        """V [P, k] -> A V [P, k] (in ``self.dtype``), one batched product."""
        V = self._as_tensor(V, "V")
        if V.dim() != 2 or V.shape[0] != self._shape[1]:
            raise ValueError(f"V must have shape [{self._shape[1]}, k], got {tuple(V.shape)}")
        if V.shape[1] == 0:
            return V.clone()
        self.num_matmat += 1
        self.num_vectors += V.shape[1]
        return self._matmat(V)

    def __matmul__(self, x: Tensor) -> Tensor:
        if isinstance(x, (Tensor, np.ndarray)) and x.ndim == 1:
            return self.matvec(x)
        return self.matmat(x)

    def to_scipy(self):
        """A scipy.sparse.linalg.LinearOperator view (float64 numpy in and out; symmetric)."""
        from scipy.sparse.linalg import LinearOperator

        def mv(v):
            return self.matvec(torch.as_tensor(np.asarray(v).reshape(-1))).double().cpu().numpy()

        def mm(V):
            return self.matmat(torch.as_tensor(np.asarray(V))).double().cpu().numpy()

        return LinearOperator(self._shape, matvec=mv, rmatvec=mv, matmat=mm, rmatmat=mm, dtype=np.float64)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(shape={self._shape}, dtype={self._dtype})"


class DenseOperator(CurvatureOperator):
    """An explicit symmetric matrix [P, P] as an operator (tests with known spectra, small Hessians).

    Args:
        matrix: [P, P] floating tensor or numpy array; must be symmetric (checked to 1e-8 relative
            unless ``check_symmetric=False``).
        dtype: dtype of the products (default: the matrix's).
    """

    def __init__(self, matrix: Union[Tensor, np.ndarray], *, dtype: Optional[torch.dtype] = None,
                 check_symmetric: bool = True):
        super().__init__()
        if isinstance(matrix, np.ndarray):
            matrix = torch.from_numpy(matrix)
        if not isinstance(matrix, Tensor) or not matrix.dtype.is_floating_point:
            raise TypeError(f"matrix must be a floating torch.Tensor or numpy array, got {type(matrix).__name__}")
        if matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] == 0:
            raise ValueError(f"matrix must be square [P, P] with P >= 1, got shape {tuple(matrix.shape)}")
        if check_symmetric:
            scale = matrix.abs().max().clamp_min(torch.finfo(matrix.dtype).tiny)
            asym = (matrix - matrix.T).abs().max() / scale
            if asym > 1e-8 and asym > 100 * torch.finfo(matrix.dtype).eps:
                raise ValueError(f"matrix must be symmetric: max |A - A^T| / max |A| = {float(asym):.3g}")
        self.matrix = matrix.to(dtype) if dtype is not None else matrix
        self._shape = (matrix.shape[0], matrix.shape[0])
        self._dtype = self.matrix.dtype
        self._device = self.matrix.device

    def _matmat(self, V: Tensor) -> Tensor:
        return self.matrix @ V


# ----------------------------------------------------------------------------------------- data
def _is_pair(data: Any) -> bool:
    return (isinstance(data, (tuple, list)) and len(data) == 2
            and isinstance(data[0], Tensor) and isinstance(data[1], Tensor))


def _check_batch(batch: Any, i: int) -> tuple[Tensor, Tensor]:
    if not (isinstance(batch, (tuple, list)) and len(batch) >= 2 and isinstance(batch[0], Tensor)
            and isinstance(batch[1], Tensor)):
        raise ValueError(f"data batch {i} must be a pair (inputs, targets) of tensors, got {type(batch).__name__}")
    x, y = batch[0], batch[1]
    if x.dim() == 0 or y.dim() == 0 or x.shape[0] != y.shape[0]:
        raise ValueError(f"data batch {i}: inputs and targets must share the leading (batch) dimension, got "
                         f"inputs {tuple(x.shape)} and targets {tuple(y.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"data batch {i} is empty (inputs {tuple(x.shape)})")
    return x, y


def _is_distinct_param_set(names: Sequence[str]) -> bool:
    return len(set(names)) == len(names)


class HessianOperator(CurvatureOperator):
    """Hessian of the full-data loss of ``model`` w.r.t. ``params``, as a [P, P] operator.

    Args:
        model: any nn.Module mapping inputs -> outputs.
        loss_fn: ``loss_fn(outputs, targets) -> scalar`` reducing over rows by a mean or a sum
            (e.g. nn.CrossEntropyLoss(), nn.MSELoss(reduction="sum"), a lambda).
        data: a pair ``(inputs [N, ...], targets [N, ...])`` or a re-iterable of such pairs (a list or
            a DataLoader). The Hessian is that of the loss over all of it: batches are weighted by
            their share of the mean's denominator ("mean") or by 1 ("sum"), so batching, chunking
            (``memory_budget``) and sharding do not change it.
        params: parameters to differentiate: None (default) = every parameter with requires_grad, in
            ``model.named_parameters()`` order; or a sequence of names or Parameter objects (kept in
            the given order). The flat vector of length P concatenates ``p.reshape(-1)`` in that order
            (``param_names``, ``param_shapes``, ``param_offsets`` record the layout).
        batch_size: split a tensor pair into batches of this many rows (not allowed with an iterable).
        dtype: dtype of the products (default: the first parameter's); parameters, buffers and floating
            data are cast to it.
        backend: "auto" (fused when supported, else generic, the reason logged), "fused" or "generic".
        memory_budget: bytes of working memory of a product (default 1 GiB); directions and rows
            are chunked to fit, which does not change the result beyond rounding. The fused backend
            counts everything it holds against it: directions and results, its [rows, k, width]
            buffers kept between products, the C++ kernels' scratch, and the primal passes it caches
            (reused while the rows and the parameters keep their values, as in Lanczos) with one
            parameter snapshot (skipkern.hessian.fused_memory); ``release_workspace()`` frees them.
        train_mode: evaluate in train mode (default False: eval mode). The modes of all submodules are
            restored after each product; BatchNorm running statistics are never updated.
        process_group: "default" (the default group when torch.distributed is initialised, else
            none), None (this process alone) or a ProcessGroup. Under a group ``data`` is this rank's
            shard and products are means over all ranks' data (module docstring); every rank must
            build the same model. ``shard_counts`` lists the ranks' shard sizes (rows, or batches
            for an iterable without a known row count). Errors in set-up raise DistributedError on
            every rank.
        reduction: None (default: read from loss_fn, e.g. ``loss_fn.reduction``, or for a plain
            callable measured on the first batch), "mean" or "sum" (must agree with what loss_fn
            declares). A reduction other than a mean or a sum raises ValueError.
    """

    def __init__(self, model: nn.Module, loss_fn, data, *, params=None, batch_size: Optional[int] = None,
                 dtype: Optional[torch.dtype] = None, backend: str = "auto",
                 memory_budget: Optional[int] = None, train_mode: bool = False,
                 process_group: Optional[object] = "default", reduction: Optional[str] = None):
        super().__init__()
        self.process_group = group = sd.resolve_group(process_group)

        def setup() -> None:
            self._setup(model, loss_fn, data, params, batch_size, dtype, backend, memory_budget, train_mode,
                        reduction)
            sharding.check_device(self)

        if group is None:
            setup()
            self.shard_counts = [sharding.shard_size(self._batches, peek=False)]
            return
        # a rank that fails locally must still reach the collective checks, or the others would wait
        sharding.collective_setup(setup, group, "HessianOperator set-up")
        sd.check_same(self._shape[0], "the number of Hessian parameters P", group)
        self.shard_counts = sd.check_nonempty(sharding.shard_size(self._batches, peek=True), "HessianOperator data",
                                              group)
        log.info("hessian: rank %d of %d, shard sizes %s", sd.rank(group), sd.world_size(group), self.shard_counts)

    def _setup(self, model, loss_fn, data, params, batch_size, dtype, backend, memory_budget, train_mode,
               reduction) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable(outputs, targets) -> scalar, got {type(loss_fn).__name__}")
        if backend not in HVP_BACKENDS:
            raise ValueError(f"backend must be one of {HVP_BACKENDS}, got {backend!r}")
        if memory_budget is not None and (not isinstance(memory_budget, int) or memory_budget <= 0):
            raise ValueError(f"memory_budget must be a positive int (bytes) or None, got {memory_budget!r}")
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}")
        self.model, self.loss_fn, self.train_mode = model, loss_fn, bool(train_mode)
        self.reduction = resolve_reduction(loss_fn, reduction)
        declared = resolve_reduction(loss_fn).kind
        if reduction is not None and declared not in ("auto", reduction):
            raise ValueError(f"reduction={reduction!r} contradicts loss_fn, which declares reduction={declared!r}; "
                             f"drop the argument or change the loss")
        self.memory_budget = memory_budget if memory_budget is not None else DEFAULT_MEMORY_BUDGET
        self._set_params(params)
        first = self._params[0]
        self._dtype = dtype if dtype is not None else first.dtype
        if not self._dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating dtype, got {self._dtype}")
        self._device = first.device
        self._set_data(data, batch_size)
        self.data_passes = 0
        self._select_backend(backend)

    # ------------------------------------------------------------------------------ set-up
    def _set_params(self, params) -> None:
        named = list(self.model.named_parameters())
        if params is None:
            chosen = [(n, p) for n, p in named if p.requires_grad]
            if not chosen:
                raise ValueError("model has no trainable parameters (none with requires_grad=True); "
                                 "pass params= explicitly or enable gradients")
        else:
            if isinstance(params, (str, Tensor)):
                params = [params]
            by_name = dict(named)
            by_id = {id(p): n for n, p in named}
            chosen = []
            for item in params:
                if isinstance(item, str):
                    if item not in by_name:
                        raise ValueError(f"params: {item!r} is not a parameter name of the model; names are "
                                         f"{list(by_name)[:8]}{'...' if len(by_name) > 8 else ''}")
                    chosen.append((item, by_name[item]))
                elif isinstance(item, Tensor) and id(item) in by_id:
                    chosen.append((by_id[id(item)], item))
                else:
                    raise ValueError(f"params must hold parameter names or Parameters of the model, got "
                                     f"{type(item).__name__}")
            if not chosen:
                raise ValueError("params is empty: the model has no trainable parameters selected")
            if not _is_distinct_param_set([n for n, _ in chosen]):
                raise ValueError("params lists a parameter more than once")
        self.param_names = [n for n, _ in chosen]
        self._params = [p for _, p in chosen]
        self.param_shapes = [tuple(p.shape) for p in self._params]
        sizes = [p.numel() for p in self._params]
        self.param_offsets = [int(x) for x in np.cumsum([0] + sizes)[:-1]]
        self.param_sizes = sizes
        P = int(sum(sizes))
        self._shape = (P, P)

    def _set_data(self, data, batch_size: Optional[int]) -> None:
        if _is_pair(data) and self.process_group is not None and data[0].dim() > 0 and data[0].shape[0] == 0:
            self._batches = []  # an empty shard: reported on every rank by check_nonempty
        elif _is_pair(data):
            x, y = _check_batch(data, 0)
            step = batch_size or x.shape[0]
            self._batches: Any = [(x[i:i + step], y[i:i + step]) for i in range(0, x.shape[0], step)]
        else:
            if batch_size is not None:
                raise ValueError("batch_size splits a tensor pair (inputs, targets); with an iterable of "
                                 "batches set the batch size in the iterable itself")
            if isinstance(data, Tensor) or not isinstance(data, Iterable):
                raise TypeError(f"data must be a pair (inputs, targets) of tensors or an iterable of such "
                                f"pairs, got {type(data).__name__}")
            if iter(data) is data:
                raise TypeError("data is a one-shot iterator (each product passes over the data again); "
                                "pass a list of batches or a DataLoader")
            self._batches = data

    def _select_backend(self, backend: str) -> None:
        ok, reason = hvp_fused.supports(self.model, self.loss_fn, self.param_names)
        if backend == "fused" and not ok:
            raise RuntimeError(f"HVP backend 'fused' cannot run here: {reason}. Use backend='generic' "
                               f"(any module) or backend='auto'.")
        name = "fused" if (backend == "fused" or (backend == "auto" and ok)) else "generic"
        why = "forced" if backend != "auto" else (
            "SkipMLP with a supported loss" if name == "fused" else f"fused unsupported: {reason}")
        self.backend, self.backend_reason = name, why
        log.info("hessian: hvp backend=%s (%s; P=%d, dtype=%s)", name, why, self._shape[0],
                 str(self._dtype).replace("torch.", ""))
        if name == "fused":
            self._impl = hvp_fused.FusedHVP(self.model, self.loss_fn, self.param_names, self._dtype)
        else:
            self._impl = hvp_generic.GenericHVP(self.model, self.loss_fn, self.param_names, self._dtype,
                                                self.reduction)

    # --------------------------------------------------------------------------- products
    def batches(self) -> Iterator[tuple[Tensor, Tensor]]:
        """The (inputs, targets) batches, validated and moved to the operator's device and dtype."""
        for i, batch in enumerate(self._batches):
            x, y = _check_batch(batch, i)
            x = x.to(self._device)
            x = x.to(self._dtype) if x.dtype.is_floating_point else x
            y = y.to(self._device)
            y = y.to(self._dtype) if y.dtype.is_floating_point else y
            yield x, y

    @contextmanager
    def _mode(self):
        # Save every submodule's flag (model.train(prev) would flatten mixed train/eval states).
        flags = [(m, m.training) for m in self.model.modules()]
        bns = [m for m in self.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        tracked = [(m, m.track_running_stats) for m in bns]
        try:
            self.model.train(self.train_mode)
            if self.train_mode:
                for m in bns:  # batch statistics, and never update the running ones
                    m.track_running_stats = False
            yield
        finally:
            for m, t in tracked:
                m.track_running_stats = t
            for m, f in flags:
                m.training = f

    def _reduction_kind(self, x: Tensor, y: Tensor, i: int) -> str:
        """The loss's reduction, measured on the first batch when loss_fn does not declare it."""
        if self.reduction.kind == "auto":
            with torch.no_grad():
                out = self.model(x[:8])
            self.reduction.kind = measure_reduction(self.loss_fn, out, y[:8], i)  # shared with the backend
        return self.reduction.kind

    def _over_batches(self, per_batch, init: Tensor) -> tuple[Tensor, float]:
        """(sum_b per_batch(i, x, y), count) over this process's batches, where per_batch returns the
        batch's sum-form term; count = sum_b d_b ("mean") or the number of rows ("sum")."""
        out, total = init, 0.0
        with self._mode():
            for i, (x, y) in enumerate(self.batches()):
                kind = self._reduction_kind(x, y, i)
                d = self.reduction.denominator(y) if kind == "mean" else float(x.shape[0])
                if kind == "mean" and d == 0:
                    continue  # every target of the batch is ignored: it adds nothing to the loss
                out.add_(per_batch(i, x, y))
                total += d
        return out, total

    def _divide(self) -> bool:
        return self.reduction.kind == "mean"

    def _finish(self, out: Tensor, total: float) -> Tensor:
        if total == 0:
            raise ValueError("data holds no batches" if self.reduction.kind == "sum" else
                             "no target of the data counts in the mean loss (all are ignore_index): the loss is nan")
        self.data_passes += 1
        return out / total if self._divide() else out

    def _partial(self, Vt: Tensor) -> tuple[Tensor, float]:
        """(sum_b H_b V^T [k, P] of the batches' sum-form losses, count) over this process's batches."""
        def hvp(i, x, y):
            return self._impl.batch_hvp(x, y, Vt, self.memory_budget, batch_index=i)
        with torch.no_grad():
            return self._over_batches(hvp, torch.zeros_like(Vt))

    def _matmat(self, V: Tensor) -> Tensor:
        Vt = V.T.contiguous()  # [k, P]: one row per direction
        if self.process_group is not None:
            return sharding.reduced_mean(self, self._partial, Vt, Vt.shape, "product",
                                         divide=self._divide).to(self._dtype).T
        return self._finish(*self._partial(Vt)).T

    def release_workspace(self) -> None:
        """Free the fused backend's cached [rows, k, width] buffers (kept between products so that
        Lanczos steps do not re-allocate them); the next product re-creates them."""
        if hasattr(self._impl, "release_workspace"):
            self._impl.release_workspace()

    def _loss_grad_sums(self, _=None) -> tuple[Tensor, float]:
        """([P + 1] float64: the sum-form gradient and loss over this process's batches, count)."""
        def term(i, x, y):
            l, g = hvp_generic.batch_loss_grad(self.model, self.loss_fn, self.param_names, self._dtype, x, y, i)
            f = self.reduction.factor(y)
            return torch.cat([g.double() * f, torch.tensor([float(l) * f], dtype=torch.float64, device=g.device)])
        return self._over_batches(term, torch.zeros(self._shape[0] + 1, dtype=torch.float64, device=self._device))

    def loss_and_gradient(self) -> tuple[float, Tensor]:
        """The full-data loss and its gradient [P] (float64), one data pass (over all ranks' shards
        under a process group, one all-reduce)."""
        if self.process_group is not None:
            acc = sharding.reduced_mean(self, self._loss_grad_sums, None, (self._shape[0] + 1,),
                                        "loss and gradient", divide=self._divide)
        else:
            acc = self._finish(*self._loss_grad_sums())
        return float(acc[-1]), acc[:-1]

    def flatten(self, tensors: Sequence[Tensor]) -> Tensor:
        """Per-parameter tensors (in ``param_names`` order) -> one flat vector [P]."""
        return torch.cat([t.reshape(-1) for t in tensors])

    def unflatten(self, v: Tensor) -> dict[str, Tensor]:
        """A flat vector [P] -> {name: tensor of that parameter's shape} (views)."""
        return {n: v[o:o + s].view(sh) for n, o, s, sh in
                zip(self.param_names, self.param_offsets, self.param_sizes, self.param_shapes)}
