"""A user's own ``nn.Module`` for ``skipkern diagnose --model SPEC``: loading it (a pickled module file,
or ``package.module:factory``, optionally with weights from ``--state-dict``), choosing the submodules
whose outputs are diagnosed (``--modules`` / ``--module-type``), and a trial forward pass that names the
input shape the model expects when the batch does not fit.

Unpickling a whole module runs code stored in the file, so a module file is loaded only with
``--trust-model-file``; weights (``--state-dict``) are always loaded weights-only (tensors and plain
containers, no code)."""
from __future__ import annotations

import importlib
import json
import logging
import os
import pickle
import sys
from pathlib import Path
from typing import Optional

from skipkern.cli.common import CLIError, one_line

__all__ = ["load_user_model", "module_selection", "expected_input", "check_forward", "default_out"]

log = logging.getLogger("skipkern")

# keys under which checkpoints commonly keep their weights (skipkern's own checkpoints: model_state)
_NESTED_STATE = ("state_dict", "model_state_dict", "model_state", "model")


def _short(e: BaseException, limit: int = 300) -> str:
    msg = one_line(f"{type(e).__name__}: {e}")
    return msg if len(msg) <= limit else msg[:limit] + " ..."


def _cwd_importable() -> None:
    """Modules in the current folder import (as under 'python -m skipkern'; the console script lacks it)."""
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())


def _import_factory(spec: str):
    """The callable named by ``package.module:attr`` (attr may be dotted, e.g. Net.create)."""
    mod_name, _, attr = spec.rpartition(":")
    if not mod_name or not attr:
        raise CLIError(f"--model {spec!r}: expected package.module:factory (a callable returning an nn.Module) or "
                       f"a file saved with torch.save(model, FILE)")
    _cwd_importable()
    try:
        module = importlib.import_module(mod_name)
    except ModuleNotFoundError as e:
        if e.name and (mod_name == e.name or mod_name.startswith(e.name + ".")):
            raise CLIError(f"--model {spec}: cannot import module {mod_name!r} (no module named {e.name!r}); put the "
                           f"folder holding it on PYTHONPATH or run from that folder") from None
        raise CLIError(f"--model {spec}: importing {mod_name!r} failed: {_short(e)}") from None
    except Exception as e:  # the user's module raised while importing
        raise CLIError(f"--model {spec}: importing {mod_name!r} failed: {_short(e)}") from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = sorted(n for n in dir(module) if not n.startswith("_"))[:12]
            raise CLIError(f"--model {spec}: module {mod_name!r} has no attribute {attr!r} (it has {names})")
        obj = getattr(obj, part)
    if not callable(obj):
        raise CLIError(f"--model {spec}: {attr!r} is a {type(obj).__name__}, not a callable returning an nn.Module")
    return obj


def _from_factory(spec: str, kwargs_json: Optional[str]):
    kwargs = {}
    if kwargs_json is not None:
        try:
            kwargs = json.loads(kwargs_json)
        except json.JSONDecodeError as e:
            raise CLIError(f"--model-kwargs must be a JSON object such as '{{\"width\": 64}}', got {kwargs_json!r} "
                           f"({e})") from None
        if not isinstance(kwargs, dict):
            raise CLIError(f"--model-kwargs must be a JSON object such as '{{\"width\": 64}}', got a "
                           f"{type(kwargs).__name__}: {kwargs_json!r}")
    factory = _import_factory(spec)
    try:
        return factory(**kwargs)
    except Exception as e:
        raise CLIError(f"--model {spec}: calling it with --model-kwargs {kwargs} raised {_short(e)}") from None


def _check_archive(p: Path, flag: str, expected: str) -> None:
    """Every torch.save file is a zip archive: anything else fails here, described (not unpickled)."""
    from skipkern.training.checkpoint import _what_is
    with open(p, "rb") as f:
        if f.read(4) != b"PK\x03\x04":
            raise CLIError(f"{flag} {p} is not a file written by {expected} (found {_what_is(p)})")


def _from_file(p: Path, trust: bool):
    import torch
    if not trust:
        raise CLIError(f"--model {p} is a file: loading a whole pickled module runs code stored in it; pass "
                       f"--trust-model-file if you trust where it came from, or use --model package.module:factory "
                       f"with --state-dict FILE (weights only, no code)")
    _check_archive(p, "--model", "torch.save(model, FILE)")
    _cwd_importable()
    try:
        obj = torch.load(p, map_location="cpu", weights_only=False)
    except (AttributeError, ModuleNotFoundError) as e:
        raise CLIError(f"--model {p}: cannot unpickle it, the classes it was saved from are not importable here "
                       f"({_short(e)}); put their module on PYTHONPATH (a class defined in a script's __main__ "
                       f"cannot be found), or use --model package.module:factory with --state-dict FILE") from None
    except Exception as e:
        raise CLIError(f"--model {p}: not a file written by torch.save(model, FILE) ({_short(e)})") from None
    return obj


def load_user_model(spec: str, *, trust: bool = False, kwargs_json: Optional[str] = None,
                    state_dict: Optional[str] = None, device: str = "cpu"):
    """(nn.Module on ``device``, description) from --model SPEC (an existing file: a pickled module,
    needs ``trust``; otherwise ``package.module:factory``) and --model-kwargs / --state-dict."""
    from torch import nn

    p = Path(spec)
    if p.is_file():
        if kwargs_json is not None:
            raise CLIError(f"--model-kwargs applies to --model package.module:factory, not to the module file {p}")
        model, what = _from_file(p, trust), f"module file {p}"
    elif ":" in spec:
        model, what = _from_factory(spec, kwargs_json), f"{spec}({kwargs_json or ''})"
    else:
        raise CLIError(f"--model {spec}: no such file, and not of the form package.module:factory")
    if not isinstance(model, nn.Module):
        hint = ""
        if isinstance(model, dict):
            hint = ("; " + ("a skipkern training checkpoint: run 'skipkern diagnose CHECKPOINT'" if "model_config" in
                            model else "a state dict? pass --model package.module:factory --state-dict FILE"))
        raise CLIError(f"--model {spec} gave an object of type {type(model).__name__}, not a torch.nn.Module{hint}")
    if state_dict is not None:
        _load_weights(model, Path(state_dict))
        what += f" with weights from {state_dict}"
    return model.to(device), f"{what} ({type(model).__name__})"


def _load_weights(model, p: Path) -> None:
    import torch
    if not p.is_file():
        raise CLIError(f"--state-dict {p} does not exist (expected a file written by torch.save(model.state_dict(), "
                       f"FILE))")
    _check_archive(p, "--state-dict", "torch.save(model.state_dict(), FILE)")
    try:
        sd = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        if isinstance(e, pickle.UnpicklingError) and "Weights only load failed" in str(e):
            # not torch's text: it offers to unpickle anyway, advice not to pass on for a weights file
            raise CLIError(f"--state-dict {p} holds objects other than tensors and plain containers (a whole "
                           f"pickled module belongs in --model FILE); save the weights with "
                           f"torch.save(model.state_dict(), FILE)") from None
        raise CLIError(f"--state-dict {p} is not a file written by torch.save(model.state_dict(), FILE) "
                       f"({_short(e, 200)})") from None

    def tensors(d) -> bool:
        return isinstance(d, dict) and bool(d) and all(isinstance(v, torch.Tensor) for v in d.values())

    if not tensors(sd):
        key = next((k for k in _NESTED_STATE if isinstance(sd, dict) and tensors(sd.get(k))), None)
        if key is None:
            raise CLIError(f"--state-dict {p} holds a {type(sd).__name__} that is not a state dict (name -> tensor)"
                           + (f" and has none under {list(_NESTED_STATE)}" if isinstance(sd, dict) else ""))
        log.info("--state-dict %s: using the weights under key %r", p, key)
        sd = sd[key]
    try:
        model.load_state_dict(sd)
    except RuntimeError as e:
        raise CLIError(f"--state-dict {p} does not fit the model: {_short(e, 400)}") from None


def module_selection(model, names: Optional[str], types: Optional[str]):
    """The ``modules`` argument of ``capture_hidden`` for --modules NAME,... / --module-type TYPE,...
    (None: its default, every activation module). A type name matches a module whose class or any base
    class has that name (Conv2d, Linear, ReLU, or a class of the user's own). Every name and type must
    match; and something must be chosen."""
    from skipkern.diagnostics.capture import select_modules

    named = [(n, m) for n, m in model.named_modules() if n]
    kinds = sorted({type(m).__name__ for _, m in named})
    if names is not None:
        sel = [s.strip() for s in names.split(",") if s.strip()]
        table = {n for n, _ in named}
        missing = [s for s in sel if s not in table]
        if missing or not sel:
            raise CLIError(f"--modules {names!r}: no submodule named {missing or names!r} in {type(model).__name__}; "
                           f"its submodules are {_listing([n for n, _ in named])}")
        return sel
    if types is not None:
        want = {s.strip() for s in types.split(",") if s.strip()}
        seen = {c.__name__ for _, m in named for c in type(m).__mro__}
        if not want or want - seen:
            raise CLIError(f"--module-type {types!r}: no submodule of {type(model).__name__} is a "
                           f"{sorted(want - seen) or types!r}; its module types are {kinds}")
        return lambda n, m: any(c.__name__ in want for c in type(m).__mro__)
    if not select_modules(model, None):
        raise CLIError(f"{type(model).__name__} has no activation modules (nn.ReLU, nn.Tanh, ...; functional ones "
                       f"such as F.relu are invisible to hooks): choose the layers with --modules NAME,... or "
                       f"--module-type TYPE,... (its module types are {kinds})")
    return None


def _listing(names: list, limit: int = 12) -> str:
    return ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def expected_input(model) -> Optional[str]:
    """The input shape the first layer with weights expects, in words, e.g. "[B, 3, H, W] (its first layer
    stem.0 is a Conv2d with 3 input channels)"; None when that layer is no convolution or linear layer."""
    from torch import nn
    from skipkern.nn import SkipLinear
    for n, m in model.named_modules():
        if not any(True for _ in m.parameters(recurse=False)):
            continue
        if isinstance(m, nn.modules.conv._ConvNd):
            dims = {1: "L", 2: "H, W", 3: "D, H, W"}[len(m.kernel_size)]
            return (f"[B, {m.in_channels}, {dims}] (its first layer {n} is a {type(m).__name__} with "
                    f"{m.in_channels} input channels)")
        if isinstance(m, (nn.Linear, SkipLinear)):
            return f"[B, {m.in_features}] (its first layer {n} is a {type(m).__name__} with {m.in_features} inputs)"
        return None
    return None


def check_forward(model, x, shape_text: str) -> None:
    """Run ``model`` on the first two samples of ``x`` (eval mode, no grad): an input that does not fit
    fails here in one line naming the shape given and the shape the model expects."""
    import torch
    from skipkern.diagnostics import eval_mode
    try:
        with torch.no_grad(), eval_mode(model):
            model(x[:2])
    except Exception as e:
        want = expected_input(model)
        raise CLIError(f"the model fails on inputs of shape [B, {', '.join(map(str, x.shape[1:]))}] ({shape_text}): "
                       f"{_short(e, 200)}" + (f"; it expects {want}: pass --input-shape to match" if want else "")
                       ) from None


def default_out(args) -> Path:
    """--out, or beside the file the net came from: ``<folder>/<file stem>_diagnose`` for a module file or
    a --state-dict; ``skipkern_diagnose`` for a factory without weights (a freshly built net)."""
    if args.out is not None:
        return Path(args.out)
    src = Path(args.state_dict) if args.state_dict else Path(args.model)
    if args.state_dict or src.is_file():
        return src.parent / f"{src.stem}_diagnose"
    return Path("skipkern_diagnose")
