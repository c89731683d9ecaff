"""``skipkern repro EXPERIMENT|all``: run the paper's experiments into --out and write report.md."""
from __future__ import annotations

import sys
import time

from skipkern.cli.common import CLIError, one_line, say
from skipkern.cli.inputs import check_data, make_context
from skipkern.cli.dist import on_every_rank
from skipkern.cli.outputs import hold_output
from skipkern.cli.overrides import check_overrides, parse_set

__all__ = ["cmd_repro", "run_recipes", "data_recipes"]


def cmd_repro(args) -> int:
    from skipkern import distributed as sd
    from skipkern.experiments import ORDER, get_recipe
    from skipkern.report import write_report

    names = list(ORDER) if args.experiment == "all" else [args.experiment]
    recipes = [get_recipe(n) for n in names]  # unknown name: ValueError listing the known ones
    mode = "quick" if args.quick else "full"
    overrides = parse_set(args.set)
    check_overrides(overrides, recipes, mode)
    ctx = make_context(args, mode)
    with hold_output(ctx.out, "reproduction"):
        deep = data_recipes(recipes, mode)
        if deep:
            cfg = deep[0].config(mode, {k: v for k, v in overrides.items() if k in deep[0].configs[mode]})
            on_every_rank(lambda: check_data(ctx, cfg["n_train"], cfg["n_test"]), "loading the data")
        world = sd.world_size(ctx.group)
        say(f"skipkern repro {args.experiment} ({mode}) -> {ctx.out}  [device {ctx.device}, backend {ctx.backend}, "
            f"data {ctx.data}, " + (f"{world} torch.distributed ranks (DDP)" if world > 1 else f"{ctx.jobs} worker(s)")
            + "]", file=sys.stderr)
        try:
            timings, failed, total = run_recipes(args, ctx, recipes, mode, overrides)
        finally:
            ctx.close()
        report = sd.run_on_main(lambda: write_report(ctx.out, timings=timings, command="skipkern " + " ".join(
            sys.argv[1:]), total_s=total, failed=failed), ctx.group)
    say(f"report: {report}  (total {total / 60:.1f} min)")
    if failed:
        raise CLIError(f"{len(failed)} experiment(s) failed: {', '.join(failed)} (details in {report})")
    return 0


def data_recipes(recipes, mode: str) -> list:
    """The recipes that load the context's data set (--data): the deep-net recipes, whose configurations
    build on the shared deep-net base (``DEEP_BASE``). simplified and connectivity generate their own
    teacher-student data and signal reads the others' results, so they need no --data-dir."""
    from skipkern.experiments.registry import DEEP_BASE
    base = set(DEEP_BASE[mode])
    return [r for r in recipes if base <= set(r.configs[mode])]


def run_recipes(args, ctx, recipes, mode: str, overrides: dict):
    """Run each recipe; one that fails is reported and the others still run (unless it is the only one or
    --debug). Under torchrun the ranks agree on each outcome. Returns ({name: wall seconds of this
    invocation}, {name: error}, total wall seconds)."""
    from skipkern import distributed as sd
    timings, failed = {}, {}
    t_all = time.perf_counter()
    for i, r in enumerate(recipes, 1):
        say(f"[{i}/{len(recipes)}] {r.name}: {r.description}", file=sys.stderr)
        t0 = time.perf_counter()
        error = exc = None
        try:
            res = r.run(ctx, {k: v for k, v in overrides.items() if k in r.configs[mode]})
        except KeyboardInterrupt:
            raise
        except Exception as e:  # one broken experiment must not cost the others (and the report)
            error, exc = f"{type(e).__name__}: {e}", e
        if ctx.group is not None:  # the ranks agree on the outcome (a write fails on rank 0 only)
            try:
                sd.check_ok(error, r.name, ctx.group)
            except sd.DistributedError as e:
                error, exc = str(e), exc or e
        if error is not None:
            if args.debug or len(recipes) == 1:
                raise exc
            failed[r.name] = error
            say(f"  {r.name} FAILED: {one_line(error)}", file=sys.stderr)
            continue
        timings[r.name] = time.perf_counter() - t0
        for f in res["findings"]:
            tag = (f"result {f['result']}" if f["result"] else "simplified model") + (
                f" [{f['family']} init]" if f.get("family") else "")
            say(f"  {tag}: {f['verdict']}" + (f" ({f['reason']})" if f.get("reason") else "")
                + f"  ({timings[r.name]:.0f} s)", file=sys.stderr)
    return timings, failed, time.perf_counter() - t_all
