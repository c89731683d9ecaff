"""The per-epoch metric files of a run and the log line of each epoch.

    metrics.jsonl   one JSON object per epoch (epoch 0 = the initial model), per-layer data included;
                    strict JSON (inf/nan as the strings "inf"/"nan").
    metrics.csv     the scalar fields of the same records (nested keys joined with "."), one row each.
"""
from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path
from typing import Any, Union

from skipkern.diagnostics import from_json_safe, json_safe
from skipkern.fileio import append_line, atomic_write

logger = logging.getLogger("skipkern.train")

__all__ = ["METRICS_JSONL", "METRICS_CSV", "write_metrics", "read_metrics", "emit"]

METRICS_JSONL = "metrics.jsonl"
METRICS_CSV = "metrics.csv"


def _scalars(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_scalars(v, key + "."))
        elif isinstance(v, (int, float, str, bool)) or v is None:
            out[key] = v
    return out


def write_metrics(out_dir: Union[str, os.PathLike], history: list, append_last: bool = False) -> None:
    """Write metrics.jsonl (full records) and metrics.csv (scalar fields) from ``history``.

    append_last: only append the last record to metrics.jsonl (its earlier lines already match
    ``history``); the records with per-layer diagnostics are large, so rewriting all of them every
    epoch would cost time quadratic in the epochs. metrics.csv (scalars only) is always rewritten,
    since a new record may bring new columns. A full disk raises NoSpaceError naming the file."""
    out = Path(out_dir)
    if append_last:
        append_line(out / METRICS_JSONL, json.dumps(json_safe(history[-1])))
    else:
        atomic_write(out / METRICS_JSONL, lambda f: f.writelines(json.dumps(json_safe(r)) + "\n" for r in history),
                     durable=False)
    rows = [_scalars(json_safe(rec)) for rec in history]
    cols: list = []
    for r in rows:
        cols.extend(k for k in r if k not in cols)

    def table(f) -> None:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)

    atomic_write(out / METRICS_CSV, table, durable=False)


def read_metrics(path: Union[str, os.PathLike]) -> list:
    """The records of a metrics.jsonl (or of the run folder holding one), inf/nan restored."""
    p = Path(path)
    if p.is_dir():
        p = p / METRICS_JSONL
    with open(p) as f:
        return [from_json_safe(json.loads(line)) for line in f if line.strip()]


def emit(sink: Any, record: dict) -> None:
    """Report one epoch's record: to the module logger (sink None), a logging.Logger, or a callable."""
    if sink is None:
        keys = ("train_loss", "train_acc", "test_acc")
        logger.info("epoch %d: %s", record["epoch"],
                    ", ".join(f"{k}={record[k]:.4g}" for k in keys if isinstance(record.get(k), float)))
    elif isinstance(sink, logging.Logger):
        sink.info("epoch %d: %s", record["epoch"],
                  {k: v for k, v in record.items() if not isinstance(v, (dict, list))})
    else:
        sink(record)
