"""``skipkern train``: train one SkipMLP into --out (checkpoint.pt, metrics.jsonl, metrics.csv); a rerun
resumes when every setting of the run matches (``skipkern.training.resume``)."""
from __future__ import annotations

import math

from skipkern.cli.common import CLIError, first_seed, say
from skipkern.cli.inputs import check_data, make_context
from skipkern.cli.dist import on_every_rank
from skipkern.cli.outputs import hold_output
from skipkern.cli.parser import parse_epochs

__all__ = ["cmd_train"]


def _check_values(args) -> None:
    """What the parser cannot check alone: values that depend on each other."""
    bad = [i for i in args.bn_layer if i >= args.depth]
    if bad:
        raise CLIError(f"--bn-layer must name hidden layers 0..{args.depth - 1} (--depth {args.depth}), got {bad}")
    if args.biasreg is not None:
        mu, sigma, lam = args.biasreg
        if not all(math.isfinite(v) for v in args.biasreg) or sigma < 0 or lam < 0:
            raise CLIError(f"--biasreg MU SIGMA LAM needs finite numbers with SIGMA >= 0 and LAM >= 0, got "
                           f"{mu:g} {sigma:g} {lam:g}")


def cmd_train(args) -> int:
    from skipkern.nn import SkipMLP, malicious_init_
    from skipkern.regularizers import BiasReg
    from skipkern.train import TrainConfig, train

    _check_values(args)
    seed = first_seed(args)
    width = args.width if args.width is not None else (64 if args.quick else 128)
    epochs = args.epochs if args.epochs is not None else (5 if args.quick else 20)
    n_train = args.n_train if args.n_train is not None else (4000 if args.quick else None)
    spectrum_at = parse_epochs(args.spectrum_at, "--spectrum-at")
    ctx = make_context(args, "quick" if args.quick else "full")
    with hold_output(args.out, "training run") as out:
        on_every_rank(lambda: check_data(ctx, n_train, args.n_test), "loading the data")
        data = ctx.dataset(n_train, args.n_test)
        model = SkipMLP(data.in_features, width, args.depth, data.num_classes, arch=args.arch,
                        degenerate_fraction=args.degenerate_fraction, batchnorm_layers=tuple(args.bn_layer),
                        backend=args.backend, seed=seed, device=args.device, init=args.init)
        if args.malicious:
            malicious_init_(model)
        reg = BiasReg(model, *args.biasreg, seed=seed) if args.biasreg else None
        cfg = TrainConfig(epochs=epochs, batch_size=args.batch_size, lr=args.lr, seed=seed, device=args.device,
                          diagnostics_every=args.diagnostics_every, spectrum_at=spectrum_at,
                          spectrum_probes=args.spectrum_probes, spectrum_steps=args.spectrum_steps,
                          spectrum_samples=args.spectrum_samples, regularizer=reg, progress=not args.no_progress)
        say(f"training {args.arch} (depth {args.depth}, width {width}) on {data.name} ({data.n_train} samples) for "
            f"{epochs} epochs -> {out}", flush=True)
        res = train(model, data, cfg, out_dir=out, resume=not args.no_resume, identity={"malicious": args.malicious})
    f = res.final
    say(f"epoch {f.get('epoch')}: train acc {f.get('train_acc', float('nan')):.4f}, test acc "
        f"{f.get('test_acc', float('nan')):.4f}, train loss {f.get('train_loss', float('nan')):.4f}")
    say(f"wrote {out / 'checkpoint.pt'}, {out / 'metrics.jsonl'}, {out / 'metrics.csv'}")
    return 0
