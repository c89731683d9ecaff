"""The convolutional part of the ``depth`` experiment: a small PlainNet and ResNet on image-shaped data,
their block outputs captured by forward hooks (``skipkern.diagnostics.capture_hidden``).

Nets (after He et al. 2016, as in Oyedotun et al.): a 3x3 stem convolution to ``channels`` maps, then
``blocks`` blocks of two 3x3 convolutions (each followed by BatchNorm when ``batchnorm``),
    plain:    out = relu(bn(conv(relu(bn(conv(x))))))
    residual: out = relu(bn(conv(relu(bn(conv(x))))) + x)
and global average pooling into a linear classifier. The hidden representation of block i is its
output [B, C, H, W], flattened as "channels" ([B H W, C]: every sample and position a row).

Data: ``synthetic_images`` (generated offline: one smooth random template per class, randomly shifted,
with Gaussian noise), or CIFAR-10/100 from the context's --data-dir (flat rows reshaped to 3x32x32).
"""
from __future__ import annotations

import math
import time
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ConvNet", "synthetic_images", "conv_study"]


class _Block(nn.Module):
    def __init__(self, c: int, residual: bool, batchnorm: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=not batchnorm)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=not batchnorm)
        self.bn1 = nn.BatchNorm2d(c) if batchnorm else nn.Identity()
        self.bn2 = nn.BatchNorm2d(c) if batchnorm else nn.Identity()
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + x if self.residual else out)


class ConvNet(nn.Module):
    """PlainNet (residual=False) or ResNet (residual=True): [B, in_ch, H, W] -> logits [B, classes]."""

    def __init__(self, in_ch: int, channels: int, blocks: int, classes: int, residual: bool, batchnorm: bool = True,
                 seed: int = 0):
        super().__init__()
        torch.manual_seed(int(seed))  # torch's default conv init (Kaiming-uniform), reproducible
        self.stem = nn.Sequential(nn.Conv2d(in_ch, channels, 3, padding=1, bias=not batchnorm),
                                  nn.BatchNorm2d(channels) if batchnorm else nn.Identity(), nn.ReLU())
        self.blocks = nn.Sequential(*[_Block(channels, residual, batchnorm) for _ in range(blocks)])
        self.head = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))

    def block_names(self) -> list:
        return [f"blocks.{i}" for i in range(len(self.blocks))]


def synthetic_images(n: int, classes: int = 10, channels: int = 3, size: int = 16, *, seed: int = 0,
                     noise: float = 0.6, shift: int = 2) -> tuple:
    """(x [n, channels, size, size] float32, y [n] int64): class c's images are its smooth random template
    (Gaussian noise blurred by a 5x5 box filter, normalised to unit rms) rolled by up to ``shift`` pixels in
    each direction, plus N(0, noise^2) pixel noise. Labels are balanced (i mod classes, shuffled)."""
    g = torch.Generator().manual_seed(int(seed))
    t = torch.randn(classes, channels, size, size, generator=g)
    t = F.avg_pool2d(F.pad(t, (2, 2, 2, 2), mode="circular"), 5, stride=1)
    t = t / t.pow(2).mean((1, 2, 3), keepdim=True).sqrt()
    y = torch.arange(n) % classes
    y = y[torch.randperm(n, generator=g)]
    x = t[y].clone()
    sh = torch.randint(-shift, shift + 1, (n, 2), generator=g)
    for i in range(n):
        x[i] = torch.roll(x[i], (int(sh[i, 0]), int(sh[i, 1])), dims=(1, 2))
    x = x + noise * torch.randn(x.shape, generator=g)
    return x.float(), y.long()


def _data(ctx, cfg: dict) -> tuple:
    """(x_train, y_train, x_eval, name, classes): CIFAR when the context asks for it, else synthetic."""
    if ctx.data in ("cifar10", "cifar100"):
        ds = ctx.dataset(int(cfg["conv_n_train"]), int(cfg["conv_eval_batch"]))
        x = ds.x_train.reshape(-1, 3, 32, 32)
        xe = ds.x_test.reshape(-1, 3, 32, 32)
        return x, ds.y_train, xe, ctx.data, ds.num_classes
    n, ne = int(cfg["conv_n_train"]), int(cfg["conv_eval_batch"])
    x, y = synthetic_images(n + ne, int(cfg["conv_classes"]), size=int(cfg["conv_size"]),
                            seed=int(cfg["conv_data_seed"]))
    return x[:n], y[:n], x[n:], "synthetic images", int(cfg["conv_classes"])


def _train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float, batch: int, seed: int) -> list:
    g = torch.Generator().manual_seed(int(seed))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    losses = []
    for _ in range(int(steps)):
        idx = torch.randint(0, x.shape[0], (batch,), generator=g)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@torch.no_grad()
def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return float(torch.cat([model(x[i:i + 500]).argmax(1) for i in range(0, x.shape[0], 500)]).eq(y).float().mean())


def conv_study(ctx, cfg: dict, progress: Optional[callable] = None) -> dict:
    """Train PlainNet and ResNet of each depth in ``conv_blocks`` and measure every block's condition
    number and numerical rank at initialisation and after training. Returns plain numbers."""
    from skipkern.diagnostics import diagnose_module
    dev = ctx.device
    x, y, xe, name, classes = _data(ctx, cfg)
    x, y, xe = x.to(dev), y.to(dev), xe.to(dev)
    rows = []
    for blocks in cfg["conv_blocks"]:
        for arch in ("plain", "residual"):
            for seed in cfg["conv_seeds"]:
                t0 = time.perf_counter()
                net = ConvNet(x.shape[1], int(cfg["conv_channels"]), int(blocks), classes, arch == "residual",
                              bool(cfg["conv_batchnorm"]), seed=int(seed)).to(dev)
                rec = {"blocks": int(blocks), "arch": arch, "seed": int(seed), "data": name}
                for when in ("init", "trained"):
                    if when == "trained":
                        losses = _train(net, x, y, int(cfg["conv_steps"]), float(cfg["conv_lr"]),
                                        int(cfg["conv_batch"]), int(seed))
                        rec["final_batch_loss"] = float(np.mean(losses[-10:]))
                        rec["train_acc"] = _accuracy(net, x[:2000], y[:2000])
                    d = diagnose_module(net, xe, modules=net.block_names(), flatten="channels")
                    c = d["condition_numbers"]
                    rec[when] = {"log10_condition": [float(v) for v in c["log10_condition"]],
                                 "rank": [int(v) for v in c["rank"]], "width": [int(v) for v in c["width"]],
                                 "first_singular_layer": int(c.summary["first_singular_layer"]),
                                 "dead_fraction": [float(v) for v in d["elimination"]["dead_fraction"]]}
                rec["seconds"] = time.perf_counter() - t0
                rows.append(rec)
                if progress is not None:
                    progress(rec)
    return {"data": name, "rows": rows, "eval_rows": int(xe.shape[0]) * int(xe.shape[2]) * int(xe.shape[3]),
            "channels": int(cfg["conv_channels"])}


def log10_capped(v: float, cap: float) -> float:
    """log10 condition number for plotting and statistics: inf (numerically singular) and values above
    ``cap`` become ``cap``."""
    return cap if not math.isfinite(v) else min(float(v), cap)
