"""SIF (NASP search of interaction functions) vs fixed interaction functions and random / TPE search.

    python -m experiments.sif                                       # synthetic (planted multiply), k = 8, 1 seed
    python -m experiments.sif --dataset ml-100k --data-dir ../shared/data --ks 2 8 --seeds 3 --out results
    python -m experiments.sif --dataset ml-100k --data-dir ../shared/data --table efficiency --out results
    python -m experiments.sif --dataset ml-100k --data-dir ../shared/data --table case --out results

Method and protocol: :mod:`jaxrec.methods.sif`. Tables: ``main`` (SIF, SIF(no-auto), first vs second
order, every fixed IFC; test RMSE per k; every retrained / fixed model tuned on the same lr x l2 grid on
seed 0's validation RMSE), ``efficiency`` (best validation RMSE against wall time of SIF, random search and
TPE, one plot), ``case`` (the searched operation, alpha, p and q plotted, each single operation with the
searched p, q). On synthetic data the grid is the command line's (default: none, to stay under 2 min).
"""
from __future__ import annotations

import dataclasses
import json

from jaxrec import cli
from jaxrec.configs.sif import FIXED, OPS, SIFConfig, check

COLUMNS = ["rmse", "rmse_std"]
GRID = [{"lr": lr, "l2": l2} for lr in (0.02, 0.05, 0.2) for l2 in (1e-5, 1e-3, 1e-2)]
# N(0, 1) embeddings (the official init) at lr 0.05 never beat the mean on ml-100k under early stopping: 0.1
REAL = {"init_scale": 0.1}
SYNTH = {"init_scale": 0.1, "lr": 0.2, "epochs": 20}
QUICK = {"epochs": 3, "small": True, "patience": 2}


def add_flags(p):
    p.add_argument("--ks", type=int, nargs="+", default=None, help="embedding sizes of --table main (default: "
                   "8 on synthetic, 2 4 8 16 on real data); --table efficiency / case use the first")
    p.add_argument("--variants", nargs="+", default=None, choices=["sif", "no_auto", "second_order"],
                   help="search variants in --table main (default: sif on synthetic, all three on real data)")
    p.add_argument("--n-random", type=cli.checked("positive", int), default=None, help="random-search architectures (default 100; 10 synthetic)")
    p.add_argument("--n-tpe", type=cli.checked("positive", int), default=None, help="TPE evaluations (default 200; 10 synthetic)")
    p.add_argument("--tpe-batch", type=cli.checked("positive", int), default=10, help="TPE trials asked at once and trained together under "
                   "vmap (optuna's constant-liar TPE); 1 = one trial at a time")
    p.add_argument("--cand-epochs", type=cli.checked("positive", int), default=None, help="training epochs of each random / TPE candidate "
                   "(default: --epochs / 5)")


def _grid(runner):
    return runner.grid if len(runner.grid) > 1 else ([{}] if runner.dataset == "synthetic" else GRID)


def _ks(runner):
    return runner.args.ks or ([8] if runner.dataset == "synthetic" else [2, 4, 8, 16])


def searched(runner, base, variant="sif", retrain=True):
    """Search on every seed, then retrain the selected op with its p, q (lr x l2 tuned on seed 0)."""
    flags = {"no_auto": variant == "no_auto", "second_order": variant == "second_order"}
    cfg = dataclasses.replace(base, model="search", patience=0, **flags)
    label = f"search-{variant}_k{base.dim}"
    found = {r["seed"]: r["extra"]["summary"] for r in runner.seeds(cfg, label=label)}
    if not retrain:
        return found, []
    fix = lambda s: dataclasses.replace(base, model="ifc", ifc="searched", op=found[s]["op"],  # noqa: E731
                                        pq=tuple(found[s]["pq"]), **flags)
    best, _ = runner.tune(base=fix(runner.seed_list[0]), grid=_grid(runner), label=f"{variant}_k{base.dim}")
    pick = {k: getattr(best, k) for k in ("lr", "l2")}
    recs = [runner.run(dataclasses.replace(fix(s), **pick), s, label=f"{variant}_k{base.dim}")
            for s in runner.seed_list]
    return found, recs


def fixed(runner, base, name):
    cfg = dataclasses.replace(base, model="ifc", ifc=name)
    best, _ = runner.tune(base=cfg, grid=_grid(runner), label=f"{name}_k{base.dim}")
    return runner.seeds(best, label=f"{name}_k{base.dim}")


def table_main(runner) -> str:
    rows, notes = {}, []
    names = {"sif": "SIF", "no_auto": "SIF(no-auto)", "second_order": "SIF (2nd order)"}
    for k in _ks(runner):
        base = dataclasses.replace(runner.base, dim=k)
        for v in runner.args.variants or (["sif"] if runner.dataset == "synthetic" else list(names)):
            found, rows[f"k={k} {names[v]}"] = searched(runner, base, v)
            notes.append(f"k={k} {names[v]} selected " + ", ".join(f"seed {s}: {a['op']}" for s, a in found.items()))
        for name in FIXED:
            rows[f"k={k} {name}"] = fixed(runner, base, name)
    notes.append("grid (lr x l2) on seed 0's validation RMSE: " + (str(_grid(runner)) if len(_grid(runner)) > 1
                                                                    else "none (the base config)"))
    return runner.table("main", rows, COLUMNS, title="SIF vs fixed interaction functions (test RMSE)",
                        notes=notes, row_header="k, model")


def table_efficiency(runner) -> str:
    import matplotlib.pyplot as plt
    import numpy as np
    import optuna
    from jaxrec.methods import sif
    from jaxrec.results import typed_command

    base, seed, syn = dataclasses.replace(runner.base, dim=_ks(runner)[0]), runner.seed_list[0], runner.dataset == "synthetic"
    a = runner.args
    n_rand, n_tpe = a.n_random or (10 if syn else 100), a.n_tpe or (10 if syn else 200)
    cand_epochs = a.cand_epochs or max(1, base.epochs // 5)
    # the search is trained again here (not read from its cached file) so its wall time comes from this run
    rec = runner.run(dataclasses.replace(base, model="search", patience=0), seed, label=f"search-sif_k{base.dim}",
                     fresh=True)
    hist = rec["extra"]["history"]
    curves = {"SIF": (np.cumsum([h["time_s"] for h in hist]), [-h["val"]["neg_rmse"] for h in hist])}
    data = runner.data(base, seed)

    def search(name, total, chunk, propose, tell=lambda batch, vals: None):
        """``(cumulative wall times, val RMSEs)`` of ``total`` candidates trained ``chunk`` at a time under
        vmap (``propose(n)`` -> ``(batch, archs)``); a fresh trainer, so each search pays its own compilation."""
        train, t, vals = sif.candidate_trainer(base, data, cand_epochs), [], []
        while len(vals) < total:
            batch, archs = propose(min(chunk, total - len(vals)))
            out = train(archs, seed)
            tell(batch, out["val_rmse"])
            t += [(t[-1] if t else 0.0) + out["wall_s"]] * len(archs)
            vals += [float(v) for v in out["val_rmse"]]
            runner.log(f"{name}: {len(vals)}/{total} evaluations, best val RMSE {min(vals):.4f}, {t[-1]:.0f}s")
        return np.asarray(t), vals

    archs = iter(sif.sample_archs(np.random.default_rng(seed), n_rand))
    curves["random"] = search("random search", n_rand, 10, lambda n: (None, [next(archs) for _ in range(n)]))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    tpe_batch = a.tpe_batch
    # several trials asked before any is told: the constant liar keeps them apart (optuna's parallel TPE)
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=seed, constant_liar=tpe_batch > 1))

    def ask(n):
        trials = [study.ask() for _ in range(n)]
        return trials, [sif.tpe_space(trial) for trial in trials]

    def tell(trials, vals):
        for trial, v in zip(trials, vals):
            study.tell(trial, float(v))

    curves["TPE"] = search("TPE", n_tpe, tpe_batch, ask, tell)
    lines = [f"### Search efficiency on {runner.dataset}, k={base.dim}, seed {seed}: best validation RMSE (standardised)",
             "", "| search | evaluations | best val RMSE | wall time (s) | time to reach random's best (s) | "
             "time to reach TPE's best (s) |", "|---|---|---|---|---|---|"]
    targets = [min(curves["random"][1]), min(curves["TPE"][1])]
    out = {}
    for name, (ts, vs) in curves.items():
        best = np.minimum.accumulate(vs)
        hits = [f"{ts[np.argmax(best <= t)]:.1f}" if (best <= t).any() else "not reached" for t in targets]
        lines.append(f"| {name} | {len(vs)} | {best[-1]:.4f} | {ts[-1]:.1f} | {hits[0]} | {hits[1]} |")
        out[name] = {"time_s": list(map(float, ts)), "best_val_rmse": list(map(float, best))}
        plt.step(ts, best, where="post", label=name)
    lines += ["", f"SIF: the search's own validation RMSE per epoch (supernet at prox_C1(alpha)); random / TPE: each "
              f"candidate trained {cand_epochs} epochs, scored by its best validation RMSE; random candidates "
              f"trained 10 at a time and TPE trials {tpe_batch} at a time under vmap; each search's wall time includes "
              f"its own compilation. Command: "
              f"`{typed_command()}`"]
    text = "\n".join(lines) + "\n"
    print(text)
    if runner.save:
        plt.xscale("log"), plt.xlabel("wall time (s)"), plt.ylabel("best validation RMSE"), plt.legend()
        plt.savefig(runner.folder / f"efficiency_k{base.dim}.png", dpi=100)
        (runner.folder / f"table_efficiency_k{base.dim}.md").write_text(text)
        (runner.folder / f"efficiency_k{base.dim}.json").write_text(json.dumps(out))
    return text


def table_case(runner) -> str:
    import matplotlib.pyplot as plt
    import numpy as np
    from jaxrec.models import ifc

    base = dataclasses.replace(runner.base, dim=_ks(runner)[0])
    found, recs = searched(runner, base, "sif")
    s0 = runner.seed_list[0]
    rows = {f"SIF ({found[s0]['op']})": recs}
    pick = {"lr": recs[0]["config"]["lr"], "l2": recs[0]["config"]["l2"]}
    for op in OPS:  # each single operation with the searched p, q (Fig. 6(c)), at SIF's tuned lr / l2
        rows[f"{op} + searched p, q"] = [runner.run(dataclasses.replace(
            base, model="ifc", ifc="searched", op=op, pq=tuple(found[s]["pq"]), **pick), s, label=f"single-{op}_k{base.dim}")
            for s in runner.seed_list]
    x = np.linspace(-3, 3, 201)
    fig, axes = plt.subplots(1, len(found), figsize=(4 * len(found), 3.2), squeeze=False)
    for ax, (s, a) in zip(axes[0], found.items()):
        pq = ifc.pq_unflat(a["pq"])
        ax.plot(x, np.asarray(ifc.mlp_apply(pq["p"], x)), label="p (users)")
        ax.plot(x, np.asarray(ifc.mlp_apply(pq["q"], x)), label="q (items)")
        ax.set_title(f"seed {s}: {a['op']}"), ax.set_xlabel("embedding coordinate"), ax.legend()
    fig.tight_layout()
    if runner.save:
        runner.folder.mkdir(parents=True, exist_ok=True)
        fig.savefig(runner.folder / f"case_pq_k{base.dim}.png", dpi=100)
    notes = [f"seed {s}: op {a['op']}, alpha " + " ".join(f"{n}={v:.3f}" for n, v in zip(OPS, a["alpha"]))
             for s, a in found.items()]
    return runner.table(f"case_k{base.dim}", rows, COLUMNS, notes=notes,
                        title=f"Case study k={base.dim}: the searched operation and each single op with its p, q")


SPEC = cli.Spec(name="sif", config=SIFConfig, method="jaxrec.methods.sif", description=__doc__.splitlines()[0],
                datasets=("synthetic", "ml-100k", "ml-latest-small"), metric="neg_rmse",
                tables={"main": table_main, "efficiency": table_efficiency, "case": table_case},
                tuned={"synthetic": SYNTH, "ml-100k": REAL, "ml-latest-small": REAL}, quick=QUICK, seeds=1, add_flags=add_flags, check=check)


def main(argv=None):
    return cli.main(SPEC, argv)


if __name__ == "__main__":
    main()
