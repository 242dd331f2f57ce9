"""Time per Lambda update (each hypergradient mode) vs a plain Theta step of MAL, measured in one process.

    JAXREC_DATA=../shared/data python -m benchmarks.mal_timing --dataset ml-100k --bases mf,lightgcn --repeats 20 --out results

Writes ``<out>/mal/<dataset>/table_timing[_<bases>].md``, ``timing_<base>.json`` and ``timing.png`` (formerly
``python -m experiments.mal --table timing``). The configuration is MAL's default (d = 64, batch = meta
batch = 5000, SOG alpha = 1e-2, IG gamma = 1) with both auxiliary tasks.
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import Any

import jax
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from jaxrec.cli import live_output  # noqa: E402
from jaxrec.methods import mal  # noqa: E402
from jaxrec.models import lightgcn  # noqa: E402
from jaxrec.results import save_result  # noqa: E402


def time_hypergradients(config: mal.MALConfig, split, *, unroll=(1, 2, 3, 4, 5), cg=(1, 2, 3, 5), repeats: int = 20,
                        seed: int = 0, graph_backend: str = "segment") -> dict[str, Any]:
    """Wall time of one Lambda update per hypergradient method vs one plain Theta step.

    All functions are jitted and measured in the same process on the same fixed (train, meta) batch of
    ``config.batch_size`` / ``config.meta_batch_size`` interactions of ``split.train`` / ``split.val``
    (auxiliary samples drawn once). The Theta step is ``grad L_in`` + Adam; a Lambda update is the
    hypergradient + Adam on Lambda. Methods: ``SOG-s`` (``s`` unrolled SGD steps, ``s = 1`` is
    ``bilevel.one_step``) and ``IG k=j`` (``j`` CG steps). Returns ``{"theta_step_s", "methods": {name:
    seconds}, "methods_median", "theta_step_median_s", "wall_s"}``: the minimum over ``repeats`` calls (robust
    to other processes on a shared machine) and the median; calls are interleaved round robin.
    """
    t_start = time.perf_counter()
    tr = split[0]
    n_users, n_items = int(tr.n_users), int(tr.n_items)
    batch, mb = mal.fixed_batches(config, mal.prepare(split), seed)  # one auxiliary sample, shared by every method
    graph = (lightgcn.build_graph(tr.user, tr.item, n_users, n_items, backend=graph_backend)
             if config.base == "lightgcn" else None)
    state = mal.init_state(jax.random.PRNGKey(seed), config, n_users, n_items)
    inner_loss, outer_loss = mal.make_losses(config, graph)
    opt_t, opt_l = optax.adam(config.lr), optax.adam(config.meta_lr, eps=config.meta_eps)

    # everything is passed as an argument (closed-over arrays would be constant-folded by XLA)
    @jax.jit
    def theta_step(theta, lam, opt_state, batch):
        g = jax.grad(inner_loss)(theta, lam, batch)
        upd, opt_state = opt_t.update(g, opt_state, theta)
        return optax.apply_updates(theta, upd), opt_state

    def lam_step_fn(cfg):
        hg = mal.make_hypergrad(cfg, inner_loss, outer_loss)

        @jax.jit
        def lam_step(theta, lam, opt_state, batch, meta_batch):
            _, d = hg(theta, lam, batch, meta_batch)
            upd, opt_state = opt_l.update(d, opt_state, lam)
            return optax.apply_updates(lam, upd), opt_state

        return lam_step

    th, lm = state.theta, state.lam
    calls = {"theta": (theta_step, (th, lm, state.inner_opt, batch))}
    for s_ in unroll:
        fn = lam_step_fn(dataclasses.replace(config, mode="sog", unroll_steps=int(s_)))
        calls[f"SOG-{s_}"] = (fn, (th, lm, state.outer_opt, batch, mb))
    for k in cg:
        fn = lam_step_fn(dataclasses.replace(config, mode="ig", cg_steps=int(k)))
        calls[f"IG k={k}"] = (fn, (th, lm, state.outer_opt, batch, mb))
    for fn, args in calls.values():
        jax.block_until_ready(fn(*args))  # compile + warm up
    # round robin: every method is timed once per round, so load changes on a shared machine hit all alike
    times = {name: [] for name in calls}
    for _ in range(repeats):
        for name, (fn, args) in calls.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times[name].append(time.perf_counter() - t0)
    out = {"theta_step_s": float(np.min(times["theta"])), "theta_step_median_s": float(np.median(times["theta"])),
           "methods": {n: float(np.min(v)) for n, v in times.items() if n != "theta"},
           "methods_median": {n: float(np.median(v)) for n, v in times.items() if n != "theta"}}
    out["wall_s"] = time.perf_counter() - t_start
    return out


def table(rows: dict, configs: dict, repeats: int) -> str:
    lines = []
    for base, t in rows.items():
        cfg, th, thm = configs[base], t["theta_step_s"], t["theta_step_median_s"]
        lines.append(f"**{base}** (batch {cfg.batch_size}, meta batch {cfg.meta_batch_size}, d={cfg.dim}; plain "
                     f"Theta step = {th * 1e3:.1f} ms min / {thm * 1e3:.1f} ms median of {repeats} interleaved calls)\n")
        lines.append("| Lambda update | min time (ms) | ratio to Theta step (min) | median time (ms) | ratio (median) |")
        lines.append("|---|---|---|---|---|")
        for k, v in t["methods"].items():
            vm = t["methods_median"][k]
            lines.append(f"| {k} | {v * 1e3:.1f} | {v / th:.2f} | {vm * 1e3:.1f} | {vm / thm:.2f} |")
        lines.append("")
    return "\n".join(lines)


def plot_timing(rows: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for base, t in rows.items():
        sog = [(int(k.split("-")[1]), v / t["theta_step_s"]) for k, v in t["methods"].items() if k.startswith("SOG")]
        ig = [(int(k.split("k=")[1]), v / t["theta_step_s"]) for k, v in t["methods"].items() if k.startswith("IG")]
        ax.plot(*zip(*sog), "o-", label=f"{base}: SOG, unrolled steps")
        ax.plot(*zip(*ig), "s--", label=f"{base}: IG, CG steps k")
    ax.set_xlabel("unrolled steps / CG steps")
    ax.set_ylabel("time per Lambda update / Theta step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="synthetic")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--bases", type=lambda s: s.split(","), default=["mf"], help="comma separated: mf,lightgcn")
    p.add_argument("--repeats", type=int, default=20, help="interleaved calls per function (min and median kept)")
    p.add_argument("--graph-backend", choices=lightgcn.BACKENDS, default="segment")
    p.add_argument("--quick", action="store_true", help="batch 512, d = 16, 3 repeats")
    p.add_argument("--out", default="runs")
    p.add_argument("--no-save", action="store_true")
    args = p.parse_args(argv)
    if any(b not in ("mf", "lightgcn") for b in args.bases) or args.repeats < 1:
        p.error("--bases: a comma-separated subset of mf,lightgcn; --repeats: an integer >= 1")
    live_output()
    repeats = min(args.repeats, 3) if args.quick else args.repeats
    split = mal.load_split(args.dataset, args.data_dir, 0)
    rows, configs = {}, {}
    for base in args.bases:
        cfg = mal.MALConfig(base=base, aux=("user", "item"), mode="sog")
        if args.quick:
            cfg = dataclasses.replace(cfg, dim=16, batch_size=512, meta_batch_size=512)
        configs[base] = cfg
        rows[base] = t = time_hypergradients(cfg, split, repeats=repeats, graph_backend=args.graph_backend)
        if not args.no_save:
            save_result("mal", args.dataset, config=cfg, seed=0, metrics={
                "theta_step_s": t["theta_step_s"], "theta_step_median_s": t["theta_step_median_s"],
                **{f"{k}_s": v for k, v in t["methods"].items()},
                **{f"{k}_median_s": v for k, v in t["methods_median"].items()}}, wall_time=t["wall_s"],
                extra={"device": str(jax.devices()[0]), "repeats": repeats}, root=args.out, name=f"timing_{base}")
    text = f"### MAL timing ({args.dataset})\n\n" + table(rows, configs, repeats)
    print(text)
    if not args.no_save:
        folder = Path(args.out) / "mal" / args.dataset
        suffix = "" if args.bases == ["mf"] else "_" + "_".join(args.bases)
        (folder / f"table_timing{suffix}.md").write_text(text + "\n")
        plot_timing(rows, folder / "timing.png")
    return text


if __name__ == "__main__":
    main()
