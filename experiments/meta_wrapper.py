"""Meta-Wrapper experiments: synthetic overfitting study, CTR main table, ablation M1-M4, sensitivity
(N, mu, beta) and step/inference timing.

Examples (results land in ``results/meta_wrapper/<dataset>/``)::

    python experiments/meta_wrapper.py --table synthetic --seeds 3          # overfitting figure + gap
    python experiments/meta_wrapper.py --table timing                        # MW(N=1,2,3) / DIN step time
    python experiments/meta_wrapper.py --table main --dataset ml-100k --seeds 3
    python experiments/meta_wrapper.py --table ablation --dataset ml-100k --seeds 3
    python experiments/meta_wrapper.py --model mw --dataset synthetic        # one model
    python experiments/meta_wrapper.py --table tune --dataset ml-100k --lrs 1e-3 5e-3 --l2s 0 1e-6
    python experiments/meta_wrapper.py --table main --dataset ml-100k --seeds 5 --tuned

``--table tune`` gives every model of the table (default: the main models) the same validation grid
(``--lrs`` x ``--l2s``) on seed 0's split and writes the best setting per model (validation AUC) to
``results/meta_wrapper/<dataset>/tuned.json``; ``--tuned`` makes main / ablation / sensitivity read it
(M1-M4 and the sensitivity runs use Meta-Wrapper's setting) and tag their files ``<table>_tuned``.

A second process running the same table command with ``--reverse`` (same ``--out``) shares the work:
it starts at the other end of the grid and seeds and never trains a run the first one has done or is doing.

``--model`` names: base, wdl, pnn, deepfm, din (baselines, full training set), mw (= M4), M1..M4, and for
the synthetic study fs (= DIN), fs_l2, fs_dropout.
"""
from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

from jaxrec.cli import add_reverse_flag, common_parser, live_output, seed_list, work_order

EXPERIMENT = "meta_wrapper"
MAIN_MODELS = ("base", "wdl", "pnn", "deepfm", "din", "mw")
SYNTH_MODELS = ("base", "fs", "fs_l2", "fs_dropout", "mw")
ABLATION = ("M1", "M2", "M3", "M4")


def make_config(name: str, args, **over):
    """MWConfig for a model name, with the shared hyper-parameters from ``args``."""
    from jaxrec.methods.meta_wrapper import MWConfig

    base = dict(emb_dim=args.emb_dim, lr=args.lr, batch_size=args.batch_size, epochs=args.epochs,
                l2=args.l2, mu=args.mu, beta=args.beta, n_inner=args.n_inner, patience=args.patience,
                track_train_loss=args.track_train_loss)
    if name in ("base", "wdl", "pnn", "deepfm", "din", "fs"):
        base.update(model="din" if name == "fs" else name, variant="plain")
    elif name == "fs_l2":
        base.update(model="din", variant="plain", l2=args.fs_l2)
    elif name == "fs_dropout":
        base.update(model="din", variant="plain", dropout=args.fs_dropout)
    elif name == "mw":
        base.update(model="din", variant="M4")
    elif name in ABLATION:
        base.update(model="din", variant=name, n_inner=1 if name == "M3" else args.n_inner)
    else:
        raise SystemExit(f"unknown --model {name!r}; use one of {MAIN_MODELS + SYNTH_MODELS[1:] + ABLATION}")
    base.update(over)
    return MWConfig(**base)


def run_one(name, args, split, seed, tag, **over):
    """Train one model/seed, save its result JSON, return the result dict (without params)."""
    from jaxrec.methods.meta_wrapper import train
    from jaxrec.results import save_result

    cfg = make_config(name, args, **over)
    t0 = time.perf_counter()
    res = train(cfg, split, seed)
    wall = time.perf_counter() - t0
    res.pop("params")
    metrics = dict(res["best"], step_time=res["step_time"])
    print(f"[{tag}] {name} seed={seed} test_auc={metrics.get('test_auc', float('nan')):.4f} "
          f"val_auc={metrics.get('val_auc', float('nan')):.4f} epoch={metrics.get('epoch')} ({wall:.0f}s)",
          flush=True)
    if not args.no_save:
        save_result(EXPERIMENT, args.dataset, config=dict(dataclasses.asdict(cfg), name=name, table=tag),
                    seed=seed, metrics=metrics, wall_time=wall, extra={"history": res["history"]},
                    root=args.out, name=f"{tag}_{name}_seed{seed}")
    return res


def load_split(args, seed):
    from jaxrec.data.ctr import load_ctr

    if args.dataset == "synthetic":
        return load_ctr("synthetic", seed=seed)
    from jaxrec.data import resolve_data_dir

    return load_ctr(args.dataset, resolve_data_dir(args.data_dir), seed=seed, max_len=args.max_len)


def table_synthetic(args):
    """Base, FS (=DIN), FS+L2, FS+dropout, MW on the synthetic set: per-epoch train/test loss (figure)
    and the final train/test gap (last epoch, no early stopping)."""
    from jaxrec.results import format_table

    rows, curves = {}, {}
    for seed in seed_list(args):
        split = load_split(args, seed)
        for name in args.models or SYNTH_MODELS:
            res = run_one(name, args, split, seed, "synthetic")
            h = res["history"]
            last = h[-1]
            rows.setdefault(name, []).append({
                "train_loss": last["train_loss"], "test_loss": last["test_loss"],
                "gap": last["test_loss"] - last["train_loss"], "test_auc": last["test_auc"],
                "min_test_loss": min(r["test_loss"] for r in h),
            })
            curves.setdefault(name, []).append([(r["train_loss"], r["test_loss"]) for r in h])
    print(format_table(rows, columns=["train_loss", "test_loss", "gap", "min_test_loss", "test_auc"]))
    out = Path(args.out) / EXPERIMENT / args.dataset
    out.mkdir(parents=True, exist_ok=True)
    (out / "synthetic_curves.json").write_text(json.dumps(curves))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
        for name, cs in curves.items():
            a = np.asarray(cs)  # [seeds, epochs, 2]
            ep = np.arange(1, a.shape[1] + 1)
            for j, title in enumerate(("training loss", "test loss")):
                ax[j].plot(ep, a[:, :, j].mean(0), label=name)
                ax[j].set_title(title)
                ax[j].set_xlabel("epoch")
        ax[0].set_ylabel("BCE")
        ax[1].legend()
        fig.tight_layout()
        fig.savefig(out / "synthetic_overfit.png", dpi=120)
        print(f"figure: {out / 'synthetic_overfit.png'}")
    except ImportError:
        print("matplotlib missing: no figure")


def _tuned_path(args) -> Path:
    return Path(args.out) / EXPERIMENT / args.dataset / "tuned.json"


def tuned_overrides(args, name: str) -> dict:
    """The ``{"lr": .., "l2": ..}`` selected by ``--table tune`` for model ``name`` (M1-M4 and the
    sensitivity runs use ``mw``'s), with ``batch_size`` and ``emb_dim`` once the shape stage
    (``--batch-sizes`` / ``--emb-dims``) has run, or ``{}`` without ``--tuned``."""
    if not getattr(args, "tuned", False):
        return {}
    path = _tuned_path(args)
    if not path.exists():
        raise SystemExit(f"--tuned: {path} not found; run --table tune --dataset {args.dataset} first")
    tuned = json.loads(path.read_text())
    key = "mw" if name in ABLATION else name
    if key not in tuned:
        raise SystemExit(f"--tuned: {path} has no entry for {key!r} (has {sorted(tuned)}); "
                         f"rerun --table tune with --models including {key}")
    return {k: tuned[key][k] for k in ("lr", "l2", "batch_size", "emb_dim") if k in tuned[key]}


def _saved_run(args, name, tag, seed, cfg):
    """The saved metrics of run ``tag``/``name``/``seed`` if its file exists with exactly ``cfg``."""
    path = Path(args.out) / EXPERIMENT / args.dataset / f"{tag}_{name}_seed{seed}.json"
    if args.no_save or not path.exists():
        return None
    rec = json.loads(path.read_text())
    saved = {k: v for k, v in rec["config"].items() if k not in ("name", "table")}
    want = json.loads(json.dumps(dataclasses.asdict(cfg)))
    return rec["metrics"] if saved == want else None


def _reuse_run(args, name, seed, cfg, tag, sources, *, copy=True, show_source=True):
    """Metrics of an identical run (same config and seed) saved as one of ``sources`` (pairs of
    (tag, model name)), or None. With ``copy``, a run found under another file name (the tuning run of
    the selected setting is seed 0 of the tuned table; the main table's ``mw`` is the ablation's ``M4``) is
    copied to ``{tag}_{name}``, with ``reused_from`` naming the original."""
    for t, n in sources:
        m = _saved_run(args, n, t, seed, cfg)
        if m is None:
            continue
        if copy and (t, n) != (tag, name):
            folder = Path(args.out) / EXPERIMENT / args.dataset
            rec = json.loads((folder / f"{t}_{n}_seed{seed}.json").read_text())
            rec["config"].update(table=tag, name=name)
            rec["reused_from"] = f"{t}_{n}_seed{seed}.json"
            (folder / f"{tag}_{name}_seed{seed}.json").write_text(json.dumps(rec, indent=2))
        print(f"[{tag}] {name} seed={seed} test_auc={m['test_auc']:.4f} val_auc={m['val_auc']:.4f} "
              f"(saved{f' {t}_{n}' if show_source else ''})", flush=True)
        return m
    return None


def _run_or_reuse(args, name, seed, tag, over, sources, splits, **reuse):
    """Metrics (best epoch + ``step_time``) of model ``name`` with overrides ``over`` on ``seed``: read
    back from ``sources`` (see :func:`_reuse_run`, keywords ``reuse``) if an identical run is saved, else
    trained and saved as ``tag``. While it trains, a ``{tag}_{name}_seed{seed}.running`` marker makes
    another process that shares ``--out`` (``--reverse``) wait for the result instead of training the same
    run. ``splits`` caches the split of the current seed only (loaded on first need, so a seed whose runs
    are all on disk loads no data)."""
    from jaxrec.results import run_once

    cfg = make_config(name, args, **over)

    def find():
        return _reuse_run(args, name, seed, cfg, tag, sources, **reuse)

    def train():
        if seed not in splits:
            splits.clear()
            splits[seed] = load_split(args, seed)
        res = run_one(name, args, splits[seed], seed, tag, **over)
        return dict(res["best"], step_time=res["step_time"])

    marker = None if args.no_save else Path(args.out) / EXPERIMENT / args.dataset / f"{tag}_{name}_seed{seed}.running"
    return run_once(find, train, marker)


def _tune_tag(over: dict) -> str:
    """File tag of a tuning run: ``tune_lr<lr>_l2<l2>``, plus ``_bs<b>_e<d>`` for a point of the shape grid."""
    tag = f"tune_lr{over['lr']:g}_l2{over['l2']:g}"
    if "batch_size" in over or "emb_dim" in over:
        tag += f"_bs{over['batch_size']}_e{over['emb_dim']}"
    return tag


def _tune_sources(over: dict, name: str) -> list:
    """Where a run with the tuned setting ``over`` may already be saved: its own tuning file, or (a shape
    point equal to the first stage's batch / embedding size) the first stage's file of the same lr / l2;
    :func:`_saved_run` checks that the config is identical."""
    sources = [(_tune_tag(over), name)]
    if "batch_size" in over or "emb_dim" in over:
        sources.append((_tune_tag({"lr": over["lr"], "l2": over["l2"]}), name))
    return sources


def table_tune(args):
    """Equal validation budget for every model, on the split of each seed in ``--seed-list`` (default seed 0):
    the grid ``--lrs`` x ``--l2s``; or, with ``--batch-sizes`` / ``--emb-dims`` and ``--tuned``, a second
    stage over batch size x embedding size at each model's selected lr / l2. Selects the best mean
    validation AUC per model (test AUC is recorded in the files, never used) and writes ``tuned.json``
    (a first stage replaces a model's entry; a second stage adds ``batch_size`` and ``emb_dim`` to it)."""
    from jaxrec.results import format_table, grid_edge_notes

    names = tuple(args.models or MAIN_MODELS)
    seeds = list(args.seed_list) if args.seed_list else [0]
    shape = bool(args.batch_sizes or args.emb_dims)
    if shape and not args.tuned:
        raise SystemExit("--batch-sizes / --emb-dims tune the shape at each model's selected lr / l2: add "
                         "--tuned (after a --table tune over --lrs x --l2s)")
    if shape:
        grid = [{"batch_size": b, "emb_dim": e} for b in (args.batch_sizes or [args.batch_size])
                for e in (args.emb_dims or [args.emb_dim])]
        label = "bs={batch_size},emb={emb_dim}".format
    else:
        grid = [{"lr": lr, "l2": l2} for lr in args.lrs for l2 in args.l2s]
        label = "lr={lr:g},l2={l2:g}".format
    centre = {n: ({k: v for k, v in tuned_overrides(args, n).items() if k in ("lr", "l2")} if shape else {})
              for n in names}
    val = {(n, label(**g)): [] for n in names for g in grid}
    splits = {}
    for seed in work_order(seeds, args):
        for name in work_order(names, args):
            for point in work_order(grid, args):  # a point already on disk (e.g. a widened grid) is read back
                over = dict(centre[name], **point)
                m = _run_or_reuse(args, name, seed, _tune_tag(over), over, _tune_sources(over, name), splits,
                                  show_source=False)
                val[(name, label(**point))].append(m["val_auc"])
    tuned, rows = {}, {}
    for name in names:
        scores = {label(**g): float(np.mean(val[(name, label(**g))])) for g in grid}
        best = max(grid, key=lambda g: scores[label(**g)])
        if shape:  # the lr / l2 it was tuned at are the model's centre
            tuned[name] = dict(centre[name], **best, val_auc=scores[label(**best)], grid_shape=scores)
        else:
            tuned[name] = dict(best, val_auc=scores[label(**best)], grid=scores)
        rows[name] = [scores]
    print(format_table(rows, row_header="model (val AUC)"))
    print("selected:", {n: {k: v for k, v in t.items() if k in ("lr", "l2", "batch_size", "emb_dim")}
                        for n, t in tuned.items()})
    for name in names:
        best = {k: tuned[name][k] for k in grid[0]}
        for note in grid_edge_notes(grid, best):
            print(f"note: {name}: {note}")
    if not args.no_save:
        path = _tuned_path(args)
        path.parent.mkdir(parents=True, exist_ok=True)
        old = json.loads(path.read_text()) if path.exists() else {}
        for name, entry in tuned.items():
            if shape:
                entry = dict(old.get(name, {}), **entry)
            old[name] = entry
        path.write_text(json.dumps(old, indent=2))
        print(f"wrote {path}")


def table_models(args, names, tag):
    """Test AUC (best-validation epoch) and RelaImpr over Base, mean ± std over seeds."""
    from jaxrec.metrics import rela_impr
    from jaxrec.results import format_table

    runs, splits = {}, {}
    for seed in work_order(seed_list(args), args):
        for name in work_order(names, args):
            over = tuned_overrides(args, name)
            sources = [(tag, name)]
            if over and name not in ABLATION:
                sources += _tune_sources(over, name)
            if name == "M4":
                sources.append((tag.replace("ablation", "main"), "mw"))
            m = _run_or_reuse(args, name, seed, tag, over, sources, splits)
            runs[name, seed] = {"test_auc": m["test_auc"], "val_auc": m["val_auc"], "epoch": m["epoch"],
                                "step_ms": 1e3 * m["step_time"]}
    rows = {name: [runs[name, seed] for seed in seed_list(args)] for name in names}
    ref = names[0]
    for name in names:
        for r, b in zip(rows[name], rows[ref]):
            r[f"relaimpr_vs_{ref}_%"] = float(rela_impr(r["test_auc"], b["test_auc"]))
    print(format_table(rows, columns=["test_auc", f"relaimpr_vs_{ref}_%", "val_auc", "epoch", "step_ms"]))


def table_sensitivity(args):
    """MW test (and validation) AUC over N, mu, beta, one factor at a time around the current setting
    (``--n-inner``/``--mu``/``--beta``, lr/l2 from ``--tuned`` if given). A configuration already on disk
    (the centre point from the ``main`` table, or a point shared by two factors) is read back, not
    retrained."""
    from jaxrec.results import format_table

    suffix = "_tuned" if args.tuned else ""
    values = {"n_inner": (1, 2, 3), "mu": (0.2, 0.4, 0.6, 0.8), "beta": (1e-4, 1e-3, 1e-2, 1.0)}
    grid = [(k, v) for k in args.factors for v in values[k]]
    centre = {"n_inner": args.n_inner, "mu": args.mu, "beta": args.beta}
    runs, splits = {}, {}
    for seed in work_order(seed_list(args), args):
        for k, v in work_order(grid, args):
            point = dict(centre, **{k: v})
            over = dict(tuned_overrides(args, "mw"), **point)
            tag = f"sens{suffix}_N{point['n_inner']}_mu{point['mu']:g}_beta{point['beta']:g}"
            done = _run_or_reuse(args, "mw", seed, tag, over, [(tag, "mw"), ("main" + suffix, "mw")], splits,
                                 copy=False, show_source=False)
            runs[k, v, seed] = {"test_auc": done["test_auc"], "val_auc": done["val_auc"]}
    rows = {f"{k}={v:g}": [runs[k, v, seed] for seed in seed_list(args)] for k, v in grid}
    print(format_table(rows, columns=["test_auc", "val_auc"], row_header="setting"))


def table_timing(args):
    """Training-step time of MW (N = 1, 2, 3) and M2/M3 as a ratio to DIN's step, and inference time, all
    measured in one process on the same batches (median over rounds, after compilation)."""
    import jax
    import jax.numpy as jnp

    from jaxrec.methods.meta_wrapper import init_state, make_predict, make_step, model_config
    from jaxrec.results import save_result

    split = load_split(args, 0)
    tr = split.train
    data = {k: jnp.asarray(v) for k, v in tr.arrays().items()}
    rng = np.random.default_rng(0)
    bs = args.batch_size
    idx = [(jnp.asarray(rng.integers(0, len(tr), bs)), jnp.asarray(rng.integers(0, len(tr), bs)))
           for _ in range(args.timing_steps)]
    variants = {"din": make_config("din", args)}
    for n in (1, 2, 3):
        variants[f"mw_N{n}"] = make_config("mw", args, n_inner=n)
    variants["M2"] = make_config("M2", args)
    variants["M3"] = make_config("M3", args)
    runners = {}
    for name, cfg in variants.items():
        mcfg = model_config(cfg, tr.n_items, tr.n_cats)
        st = init_state(cfg, mcfg, jax.random.PRNGKey(0))
        step = make_step(cfg, mcfg)
        st, _ = step(st, data, idx[0][0], idx[0][1], jax.random.PRNGKey(1))
        jax.block_until_ready(st.params)
        runners[name] = (step, st)
    times = {k: [] for k in runners}
    for _ in range(args.timing_rounds):
        for name, (step, st) in runners.items():
            t0 = time.perf_counter()
            s = st
            for a, b in idx:
                s, _ = step(s, data, a, b, jax.random.PRNGKey(2))
            jax.block_until_ready(s.params)
            times[name].append((time.perf_counter() - t0) / len(idx))
    med = {k: float(np.median(v)) for k, v in times.items()}
    # inference: the same jitted forward for DIN and MW (the wrapper changes training only)
    mcfg = model_config(variants["din"], tr.n_items, tr.n_cats)
    pred = make_predict(mcfg, "din")
    test = {k: jnp.asarray(v[:args.eval_batch]) for k, v in split.test.arrays().items()}
    inf = {}
    for name in ("din", "mw_N1"):
        p = runners[name][1].params
        jax.block_until_ready(pred(p, test))
        ts = []
        for _ in range(args.timing_rounds):
            t0 = time.perf_counter()
            for _ in range(10):
                out = pred(p, test)
            jax.block_until_ready(out)
            ts.append((time.perf_counter() - t0) / 10)
        inf[name] = float(np.median(ts))
    metrics = {f"step_ms_{k}": 1e3 * v for k, v in med.items()}
    metrics.update({f"ratio_{k}_over_din": v / med["din"] for k, v in med.items()})
    metrics.update({f"infer_ms_{k}": 1e3 * v for k, v in inf.items()})
    for k, v in metrics.items():
        print(f"{k:28s} {v:.3f}")
    if not args.no_save:
        save_result(EXPERIMENT, args.dataset, config={"batch_size": bs, "emb_dim": args.emb_dim,
                    "timing_steps": args.timing_steps, "timing_rounds": args.timing_rounds,
                    "eval_batch": args.eval_batch}, seed=0, metrics=metrics, wall_time=0.0, root=args.out,
                    name="timing")


def table_report(args):
    """Re-print a table from the saved result files of ``--report-tag`` (main / ablation) over all seeds
    found, with RelaImpr against the tag's first model (Base for main, M1 for ablation)."""
    from jaxrec.metrics import rela_impr
    from jaxrec.results import format_table, load_results

    tag = args.report_tag
    names = tuple(args.models or (MAIN_MODELS if tag.startswith("main") else ABLATION))
    recs = {n: {r["seed"]: r["metrics"] for r in load_results(EXPERIMENT, args.dataset, args.out, f"{tag}_{n}_seed*.json")}
            for n in names}
    ref = names[0]
    seeds = sorted(set.intersection(*[set(v) for v in recs.values()])) if recs else []
    if not seeds:
        raise SystemExit(f"no seed has results for every model of {names} under {args.out}/{EXPERIMENT}/{args.dataset}")
    rows = {}
    for n in names:
        rows[n] = [{"test_auc": recs[n][s]["test_auc"],
                    f"relaimpr_vs_{ref}_%": float(rela_impr(recs[n][s]["test_auc"], recs[ref][s]["test_auc"])),
                    "val_auc": recs[n][s]["val_auc"], "step_ms": 1e3 * recs[n][s]["step_time"]} for s in seeds]
    print(f"seeds: {seeds}")
    print(format_table(rows))


def build_parser():
    """The command line of this experiment (``main`` parses with it; the tests check RESULTS.md's commands)."""
    p = common_parser(__doc__.splitlines()[0])
    p.add_argument("--table", default="single",
                   choices=["single", "synthetic", "tune", "main", "ablation", "sensitivity", "timing",
                            "report"])
    p.add_argument("--report-tag", default="main", choices=["main", "ablation", "main_tuned", "ablation_tuned"],
                   help="which saved table --table report aggregates")
    p.add_argument("--tuned", action="store_true",
                   help="main/ablation/sensitivity: use the lr/l2 per model from --table tune (tuned.json)")
    p.add_argument("--factors", nargs="+", default=["n_inner", "mu", "beta"],
                   choices=["n_inner", "mu", "beta"], help="--table sensitivity: the factors to vary")
    add_reverse_flag(p)
    p.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 5e-3], help="--table tune: learning rates")
    p.add_argument("--l2s", type=float, nargs="+", default=[0.0, 1e-6], help="--table tune: l2 weights")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=None,
                   help="--table tune --tuned: second stage, batch sizes at each model's selected lr / l2")
    p.add_argument("--emb-dims", type=int, nargs="+", default=None,
                   help="--table tune --tuned: second stage, embedding sizes at each model's selected lr / l2")
    p.add_argument("--model", default="mw", help="model for --table single")
    p.add_argument("--models", nargs="+", default=None, help="override the model list of a table")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--emb-dim", type=int, default=16)
    p.add_argument("--l2", type=float, default=0.0)
    p.add_argument("--fs-l2", type=float, default=1e-4, help="l2 of the FS+L2 synthetic baseline")
    p.add_argument("--fs-dropout", type=float, default=0.5, help="dropout of the FS+dropout baseline")
    p.add_argument("--mu", type=float, default=0.4)
    p.add_argument("--beta", type=float, default=1e-2)
    p.add_argument("--n-inner", type=int, default=1)
    p.add_argument("--patience", type=int, default=0)
    p.add_argument("--max-len", type=int, default=50)
    p.add_argument("--eval-batch", type=int, default=4096)
    p.add_argument("--timing-steps", type=int, default=50)
    p.add_argument("--timing-rounds", type=int, default=5)
    p.add_argument("--no-train-loss", dest="track_train_loss", action="store_false",
                   help="skip the full training-set loss after each epoch (faster on real sets)")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    live_output()
    if args.epochs is None:
        args.epochs = 30 if args.dataset == "synthetic" else 5
    if args.quick:
        args.epochs, args.timing_steps, args.timing_rounds = 2, 5, 2
    suffix = "_tuned" if args.tuned else ""
    if args.table == "synthetic":
        table_synthetic(args)
    elif args.table == "tune":
        table_tune(args)
    elif args.table == "main":
        table_models(args, tuple(args.models or MAIN_MODELS), "main" + suffix)
    elif args.table == "ablation":
        table_models(args, tuple(args.models or ABLATION), "ablation" + suffix)
    elif args.table == "sensitivity":
        table_sensitivity(args)
    elif args.table == "timing":
        table_timing(args)
    elif args.table == "report":
        table_report(args)
    else:
        table_models(args, (args.model,), "single")


if __name__ == "__main__":
    sys.exit(main())
