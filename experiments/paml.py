"""PAML / AT-PAML / REG-PAML vs MeLU, Meta-SGD and transfer learning on cold-start users (Yu et al., AAAI 2021).

    python -m experiments.paml                                          # synthetic, 6 methods, 1 seed, < 2 min
    python -m experiments.paml --dataset ml-100k --data-dir ../shared/data --seeds 3 --out results
    python -m experiments.paml --dataset ml-1m-melu --data-dir ../shared/data --outer-lr 5e-6 5e-5 5e-4
    python -m experiments.paml --dataset ml-100k --data-dir ../shared/data --table gamma
    python -m experiments.paml --dataset ml-100k --data-dir ../shared/data --table major_minor

Method and protocol: :mod:`jaxrec.methods.paml`. Tables: ``main`` (paper Tables 2-3: MSE, nDCG@3, nDCG@5),
``major_minor`` (Table 4: major / minor MSE and the t-test p), ``gamma`` (Table 5: REG-PAML's gamma). Every
method runs at its paper outer rate unless ``--outer-lr`` is given; several values are a grid searched for
every method alike on seed 0's validation MSE. Runs are cached in ``<out>/paml/<dataset>/<method>_<hash>_seed<s>.json``.
"""
from __future__ import annotations

import dataclasses

from jaxrec import cli
from jaxrec.configs.paml import VARIANTS, PAMLConfig

NAMES = {"melu": "MeLU", "meta_sgd": "Meta-SGD", "transfer": "Transfer", "paml": "PAML", "at_paml": "AT-PAML",
         "reg_paml": "REG-PAML"}
PAPER_OUTER_LR = {"melu": 5e-5, "meta_sgd": 5e-5, "transfer": 5e-5, "paml": 5e-6, "at_paml": 5e-5, "reg_paml": 5e-5}
GAMMAS = (1e-5, 1e-4, 1e-3, 1e-2)
# the synthetic default: a small model, a few epochs, rates scaled up so that a short run trains
SYNTHETIC = {"emb_dim": 8, "hidden": "32,16", "rate_hidden": "16,8", "epochs": 5, "memory_size": 500,
             "outer_lr": 5e-3, "warmup_lr": 5e-3, "inner_lr": 1e-2, "rate_scale": 0.1, "eval_batch": 128}
QUICK = {"small": True, "epochs": 2, "emb_dim": 4, "hidden": "8", "rate_hidden": "8,4", "memory_size": 64,
         "eval_batch": 64}


def configure(runner, name: str):
    """``name``'s config: the command line's base with the paper's outer rate (real data, no ``--outer-lr``)."""
    cfg = dataclasses.replace(runner.base, name=name)
    if runner.dataset != "synthetic" and runner.args.outer_lr is None:
        cfg = dataclasses.replace(cfg, outer_lr=PAPER_OUTER_LR[name])
    return cfg


def add_flags(p) -> None:
    p.add_argument("--methods", nargs="+", choices=VARIANTS, default=list(VARIANTS),
                   help="family members in the main / major_minor tables (default: all six)")


def run_family(runner) -> tuple[dict, list[str]]:
    """Every method of ``--methods`` tuned alike on the command line's grid (or at its preset), then seeds."""
    rows, notes = {}, []
    for name in dict.fromkeys(runner.args.methods):
        best, grid = runner.tune(base=configure(runner, name), label=name)
        rows[NAMES[name]] = runner.seeds(best, label=name)
        notes.append(f"{NAMES[name]}: outer_lr={best.outer_lr:g}" + (
            " (grid on seed 0's val MSE: " + ", ".join(f"{g['outer_lr']:g} -> {-g['val_neg_mse']:.4f}"
                                                       for g in grid if "error" not in g) + ")" if grid else ""))
    return rows, notes


def _mean(recs, key):
    vals = [r["metrics"]["test"][key] for r in recs]
    return sum(vals) / len(vals)


def table_main(runner) -> str:
    rows, notes = run_family(runner)
    mse = {k: _mean(v, "mse") for k, v in rows.items()}
    bases = [b for b in ("MeLU", "Meta-SGD", "Transfer") if b in mse]
    if "REG-PAML" in mse and "MeLU" in mse:
        best_base = min(bases, key=mse.get)
        notes += [f"REG-PAML vs MeLU test MSE: {100 * (mse['REG-PAML'] / mse['MeLU'] - 1):+.1f}% (paper -17%); "
              f"vs the best baseline ({best_base}): {100 * (mse['REG-PAML'] / mse[best_base] - 1):+.1f}%"]
    return runner.table("main", rows, ["mse", "ndcg@3", "ndcg@5"], notes=notes,
                        title="Cold-start rating prediction (MSE lower is better)")


def table_major_minor(runner) -> str:
    rows, notes = run_family(runner)
    gap = {k: _mean(v, "mse_minor") - _mean(v, "mse_major") for k, v in rows.items()}
    frac = next(iter(rows.values()))[0]["metrics"]["test"]["major_frac"]
    notes += [f"major / minor test users: {frac:.3f} / {1 - frac:.3f} (paper on ML-1M: 0.648 / 0.352)",
              "minor - major MSE gap: " + ", ".join(f"{k} {v:+.4f}" for k, v in gap.items())]
    return runner.table("major_minor", rows, ["mse_major", "mse_minor", "p_major_minor", "mse"], notes=notes,
                        title="Major / minor users (two-tailed t-test of the per-user MSEs)")


def table_gamma(runner) -> str:
    base = configure(runner, "reg_paml")
    rows = {f"gamma={g:g}": runner.seeds(dataclasses.replace(base, gamma=g), label="reg_paml") for g in GAMMAS}
    return runner.table("gamma", rows, ["mse", "ndcg@3", "ndcg@5"], row_header="REG-PAML",
                        title=f"REG-PAML's gamma (outer_lr={base.outer_lr:g})")


SPEC = cli.Spec(name="paml", config=PAMLConfig, method="jaxrec.methods.paml", description=__doc__.splitlines()[0],
                datasets=("synthetic", "ml-1m-melu", "ml-100k"), metric="neg_mse",
                tables={"main": table_main, "major_minor": table_major_minor, "gamma": table_gamma},
                tuned={"synthetic": SYNTHETIC}, quick=QUICK, seeds=1, add_flags=add_flags)


def main(argv=None):
    return cli.main(SPEC, argv)


if __name__ == "__main__":
    main()
