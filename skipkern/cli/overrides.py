"""``repro --set KEY=VALUE``: parsed as JSON where possible and checked against the recipe's own
configuration (known key, the type of its default, a sensible range) before any worker or progress
bar starts, so ``--set epochs=abc`` is one line naming the key and the expected type."""
from __future__ import annotations

import json
from typing import Any, Sequence

from skipkern.cli.common import CLIError

__all__ = ["parse_set", "check_overrides"]


def parse_set(items: Sequence[str]) -> dict:
    """--set key=value pairs; values parsed as JSON when they can be (numbers, lists, true/false, null),
    else kept as strings."""
    out = {}
    for it in items:
        if "=" not in it:
            raise CLIError(f"--set expects KEY=VALUE, got {it!r}")
        k, v = it.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = v
    return out


def _kind(default: Any) -> str:
    if isinstance(default, bool):
        return "a boolean (true or false)"
    if isinstance(default, int):
        return "an integer"
    if isinstance(default, float):
        return "a number"
    if isinstance(default, str):
        return "a string"
    if isinstance(default, (list, tuple)):
        return "a JSON list" + (f" of {_kind(default[0])[2:]}s" if default else "") + " such as [0,5]"
    return "an integer or null"  # None defaults are optional counts (n_train, n_test: null = all)


def _fits(value: Any, default: Any) -> bool:
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, str):
        return isinstance(value, str)
    if isinstance(default, (list, tuple)):
        return isinstance(value, list) and (not default or all(_fits(v, default[0]) for v in value))
    return value is None or (isinstance(value, int) and not isinstance(value, bool))


def _numbers(value: Any) -> list:
    items = value if isinstance(value, list) else [value]
    return [v for v in items if isinstance(v, (int, float)) and not isinstance(v, bool)]


def check_overrides(overrides: dict, recipes: Sequence, mode: str) -> None:
    """CLIError unless every override is a known key of one of ``recipes`` in ``mode`` with a value of its
    default's type, no negative number, a count >= 1 where the default is one, and the training settings
    acceptable to ``TrainConfig``."""
    names = ", ".join(r.name for r in recipes)
    unknown = [k for k in overrides if not any(k in r.configs[mode] for r in recipes)]
    if unknown:
        raise CLIError(f"--set: unknown setting(s) {unknown} for {names}; see skipkern/experiments/registry.py "
                       f"for the keys")
    from skipkern.train import TrainConfig

    train_keys = set(TrainConfig.__dataclass_fields__) - {"regularizer", "device", "progress"}
    for key, value in overrides.items():
        default = next(r.configs[mode][key] for r in recipes if key in r.configs[mode])
        if not _fits(value, default):
            raise CLIError(f"--set {key}={json.dumps(value) if not isinstance(value, str) else value}: {key} must be "
                           f"{_kind(default)} (the recipe's default is {json.dumps(default)})")
        if any(v < 0 for v in _numbers(value)):
            raise CLIError(f"--set {key}={json.dumps(value)}: {key} must not be negative")
        counts = isinstance(default, int) and not isinstance(default, bool) and default >= 1
        if counts and key not in train_keys and value < 1:
            raise CLIError(f"--set {key}={value}: {key} must be >= 1")
        if key in train_keys:
            try:
                TrainConfig(**{key: value})
            except (TypeError, ValueError) as e:
                raise CLIError(f"--set {key}={json.dumps(value)}: {str(e).replace('TrainConfig.', '')}") from None
