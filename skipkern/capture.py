"""A training step (forward, loss, backward, Adam) captured once and replayed.

At the paper's size (batch 500, width 128, depth 20) one eager step is ~100 kernel launches and Python per
layer; on a GPU the work itself takes microseconds. ``TrainStep`` removes the launch overhead:
- mode "graph": the whole step (forward, loss, backward, torch's fused Adam with capturable state) is
  recorded once per input shape into a CUDA graph (torch.cuda.CUDAGraph) and replayed; a call copies the
  batch into the graph's static inputs and replays, with no host synchronisation. Capturing needs a few
  warm-up steps (kernel compilation, allocator pools): the parameters, buffers and optimizer state are
  restored after them, so the captured step trains exactly as the plain step would.
- mode "compile": the model under torch.compile(mode="reduce-overhead") (CUDA graphs inside the compiled
  forward and backward), fused Adam eager.
- mode "eager": the plain step (the reference, and what runs on CPU).
- mode "auto": "graph" on CUDA, "eager" elsewhere. A mode that cannot run here (graph or compile on CPU
  tensors) falls back to "eager", logged once and recorded in ``mode_used``.
The input never gets a gradient (x does not require grad), so no kernel computes dx for the input layer
(the whole-MLP op skips it; see SkipMLP(fused="mlp")).
"""
from __future__ import annotations

import logging
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

log = logging.getLogger("skipkern")

__all__ = ["TrainStep", "MODES"]

MODES = ("auto", "graph", "compile", "eager")
MAX_GRAPHS = 4  # captured shapes kept (the full batch and a ragged last one, typically)


class TrainStep:
    """``step(x, y) -> loss`` (a 0-dim tensor on the model's device; reading it synchronises).

    Args:
        model: the module to train (parameters on one device).
        loss_fn: loss(outputs, targets) -> scalar (default cross-entropy).
        lr, betas, eps, weight_decay: Adam's (the paper: lr 5e-4).
        mode: "auto", "graph", "compile" or "eager" (see the module docstring).
        warmup: eager steps run (and undone) before a capture.
        optimizer: an existing torch.optim.Adam over the model's parameters to use instead (its state is
            kept; for "graph" it must have been built with capturable=True).
    """

    def __init__(self, model: nn.Module, loss_fn: Callable = F.cross_entropy, lr: float = 5e-4,
                 betas: tuple = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0, mode: str = "auto",
                 warmup: int = 3, optimizer: Optional[torch.optim.Optimizer] = None):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if not isinstance(warmup, int) or warmup < 1:
            raise ValueError(f"warmup must be a positive int (eager steps before a capture), got {warmup!r}")
        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("model has no parameters that require grad; nothing to train")
        self.device = self.params[0].device
        self.model, self.loss_fn, self.warmup = model, loss_fn, warmup
        self.mode_requested = mode
        self.mode_used = self._resolve(mode)
        cuda = self.device.type == "cuda"
        if optimizer is None:
            kw = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
            if cuda:  # torch's fused (single-kernel) Adam; capturable keeps its step count on the GPU
                kw.update(fused=True, capturable=self.mode_used == "graph")
            optimizer = torch.optim.Adam(self.params, **kw)
        elif self.mode_used == "graph" and not all(g.get("capturable") for g in optimizer.param_groups):
            raise ValueError("optimizer must be built with capturable=True for mode='graph' (its step count "
                             "has to live on the GPU); or pass mode='eager'")
        self.optimizer = optimizer
        self._graphs: dict = {}
        self._compiled = torch.compile(model, mode="reduce-overhead") if self.mode_used == "compile" else None
        log.info("TrainStep: mode=%s (asked %s), Adam fused=%s, device=%s", self.mode_used, mode,
                 bool(optimizer.defaults.get("fused")), self.device)

    def _resolve(self, mode: str) -> str:
        if self.device.type == "cuda":
            return "graph" if mode == "auto" else mode
        if mode in ("graph", "compile"):
            log.info("TrainStep: mode=%r needs CUDA tensors, the model is on %s: running the plain eager step",
                     mode, self.device)
        return "eager"

    # ------------------------------------------------------------------------------------------ steps
    def _eager(self, x: Tensor, y: Tensor, model: Optional[Callable] = None) -> Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss_fn((model or self.model)(x), y)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        """One training step on the batch (x [B, ...], y [B, ...]); returns the batch loss (before the update)."""
        if self.mode_used == "eager":
            return self._eager(x, y)
        if self.mode_used == "compile":
            return self._eager(x, y, self._compiled)
        key = (tuple(x.shape), x.dtype, tuple(y.shape), y.dtype)
        g = self._graphs.get(key)
        if g is None:
            if len(self._graphs) >= MAX_GRAPHS:
                log.info("TrainStep: %d shapes captured already; eager step for shape %s", MAX_GRAPHS, key[0])
                return self._eager(x, y)
            g = self._graphs[key] = self._capture(x, y)
        g["x"].copy_(x, non_blocking=True)
        g["y"].copy_(y, non_blocking=True)
        g["graph"].replay()
        return g["loss"]

    step = __call__

    # ---------------------------------------------------------------------------------------- capture
    def _snapshot(self) -> tuple:
        tensors = [p.data for p in self.params] + list(self.model.buffers())
        state = {id(p): {k: v.clone() if isinstance(v, Tensor) else v for k, v in self.optimizer.state[p].items()}
                 for p in self.params if p in self.optimizer.state}
        return [t.clone() for t in tensors], tensors, state

    @torch.no_grad()
    def _restore(self, snap: tuple) -> None:
        """Undo the warm-up steps in place (the graph records these very tensors' addresses)."""
        saved, tensors, state = snap
        for s, t in zip(saved, tensors):
            t.copy_(s)
        for p in self.params:
            st = self.optimizer.state.get(p)
            if not st:
                continue
            before = state.get(id(p))
            for k, v in st.items():
                if isinstance(v, Tensor):
                    v.copy_(before[k]) if before is not None else v.zero_()
                elif before is not None:
                    st[k] = before[k]

    def _capture(self, x: Tensor, y: Tensor) -> dict:
        sx, sy = x.clone(), y.clone()
        snap = self._snapshot()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up off the default stream, as torch.cuda.graphs asks
            for _ in range(self.warmup):
                self._eager(sx, sy)
        torch.cuda.current_stream().wait_stream(side)
        self._restore(snap)
        self.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            loss = self.loss_fn(self.model(sx), sy)
            loss.backward()
            self.optimizer.step()
        log.info("TrainStep: captured a CUDA graph for inputs %s", tuple(x.shape))
        return dict(graph=graph, x=sx, y=sy, loss=loss.detach())
