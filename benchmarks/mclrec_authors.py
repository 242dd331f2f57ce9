"""MCLRec side by side with the authors' PyTorch code (issue 32): the first ``--batches`` training batches
on Amazon_Beauty, alternating one batch of ours and one of theirs, on the same pinned core(s).

Theirs: ``benchmarks/mclrec_authors_torch.py``, run as a subprocess under ``--torch-python`` (a Python with
torch + RecBole's dependencies, never the jaxrec venv) with ``taskset -c <cores>``; it imports their
modules from ``--authors`` (a checkout of QinHsiu/MCLRec) and runs their ``Trainer._train_epoch`` with
their Beauty settings (``scripts/train_beauty.sh`` + ``seq.yaml`` + ``properties/model/MCLRec.yaml``,
CPU, seed 2020): per batch their loader (slice + python-loop augmentation), stage 1, stage 2, stage 1 again.
Ours: ``jaxrec.methods.mclrec`` with ``preset("mclrec")`` (repeat_stage1, normalize_aug, reg_per_row) and
``ragged_width=0`` by default (the same width 50 as theirs; ``--ragged-width 16`` is the preset's
cost-only trick), data from ``load(cfg, "Amazon_Beauty", data_dir, seed=0)``, seed 0; per batch the batch
preparation of :func:`jaxrec.methods.mclrec.epoch_batches` (gather of the permuted instances, device
transfer, the batch key) and the jitted ``make_step`` (augmentation, stage 1, stage 2, stage 1 again),
``block_until_ready``. Compilation (``lower().compile()`` before batch 1) and both sides' setup / epoch
shuffle are reported separately, not in the per-batch times.

Recorded per batch: wall time (data loading included on both sides) and the losses. Theirs per stage
(``step1`` / ``step2`` / ``step3``): L_rec, L_cl1 (computed, weight lmd = 0), L_cl2 = the three InfoNCE terms
``(h1, z2), (h2, z1), (z1, z2)``, R = the three ``meta_contrast_rl`` terms (without the 0.1), the stage's
total. Ours: the step's aux (the repeated stage 1's ``loss, l_rec, l_cl2, reg``; L_cl1 is not computed at
lam = 0) and ``phi_loss`` (stage 2's ``L_cl2 + 0.1 R``). The table: mean of each loss over batches
1-10 and the last 10, and the per-batch time ratio ours / theirs (median, min, max) with the load average
before / after. Both sides draw their own initialisation, batch order and augmentations (different RNGs),
so the loss comparison is of levels and trends, not of equal numbers. One run; the load is printed beside
every ratio.

    python benchmarks/mclrec_authors.py --authors /work/authors/MCLRec --torch-python /work/torchenv/bin/python \\
        --batches 50 --threads 1            # writes results/mclrec/bench_cpu/authors_side_by_side.{json,md}
    python benchmarks/mclrec_authors.py --authors ... --torch-python ... --ragged-width 16 --tag _ragged16

The torch side needs no patch of their files on torch 2.13 / numpy 2.x: the driver sets the removed numpy
aliases (``np.float``, ``np.int``; ``np.bool`` / ``np.long`` where missing) before importing their modules.
Their ``requirements.txt`` pins ``scipy==1.6.0``, ``colorlog==4.7.2``, ``colorama==0.4.4`` (unpinned here:
current releases). Where their checkout lacks large files (Taobao / ml-1m data, checkpoints) nothing
changes: only ``dataset/Amazon_Beauty`` is read.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DRIVER = Path(__file__).resolve().parent / "mclrec_authors_torch.py"

# (label, theirs: (stage, key), ours: aux key or None)
ROWS = [
    ("stage 1 L_rec", ("step1", "l_rec"), None),
    ("stage 1 L_cl2", ("step1", "l_cl2"), None),
    ("stage 1 R", ("step1", "reg"), None),
    ("stage 1 loss", ("step1", "loss"), None),
    ("stage 2 loss (L_cl2 + 0.1 R)", ("step2", "loss"), "phi_loss"),
    ("stage 3 L_rec", ("step3", "l_rec"), "l_rec"),
    ("stage 3 L_cl1 (weight 0)", ("step3", "l_cl1"), None),
    ("stage 3 L_cl2", ("step3", "l_cl2"), "l_cl2"),
    ("stage 3 L_con(h1, z2)", ("step3", "cl2_terms", 0), None),
    ("stage 3 L_con(h2, z1)", ("step3", "cl2_terms", 1), None),
    ("stage 3 L_con(z1, z2)", ("step3", "cl2_terms", 2), None),
    ("stage 3 R", ("step3", "reg"), "reg"),
    ("stage 3 R(h1, z2)", ("step3", "r_terms", 0), None),
    ("stage 3 R(h2, z1)", ("step3", "r_terms", 1), None),
    ("stage 3 R(z1, z2)", ("step3", "r_terms", 2), None),
    ("stage 3 loss", ("step3", "loss"), "loss"),
]


def _theirs_value(rec: dict, spec) -> float:
    st = rec["stages"].get(spec[0], {})
    v = st.get(spec[1], float("nan"))
    if len(spec) == 3:
        v = v[spec[2]] if isinstance(v, list) and len(v) > spec[2] else float("nan")
    return float(v)


def _mean(xs):
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    return statistics.fmean(xs) if xs else float("nan")


def summarise(ours: list[dict], theirs: list[dict], window: int = 10) -> dict:
    """The comparison table from the per-batch records.

    ``ours[i]``: ``{"wall_s", "aux": {loss key: float}}``; ``theirs[i]``: ``{"wall_s", "stages": {stage:
    {key: float or list}}}``. Returns ``{"rows": [{"label", "theirs_first", "ours_first", "theirs_last",
    "ours_last"}], "windows": ((1, w), (n - w + 1, n)), "ratio": {"median", "min", "max", "per_batch"}}``:
    means over the first and the last ``window`` batches (1-based, inclusive; NaN where a side has no such
    quantity), and the per-batch wall-time ratio ours / theirs over the batches both sides ran.
    """
    n = min(len(ours), len(theirs))
    if n == 0:
        raise ValueError("no batches to summarise")
    w = min(window, n)
    first, last = range(0, w), range(n - w, n)
    rows = []
    for label, tspec, okey in ROWS:
        row = {"label": label}
        for name, rng in (("first", first), ("last", last)):
            row[f"theirs_{name}"] = _mean(_theirs_value(theirs[i], tspec) for i in rng)
            row[f"ours_{name}"] = _mean(float(ours[i]["aux"][okey]) for i in rng) if okey else float("nan")
        rows.append(row)
    ratio = [ours[i]["wall_s"] / theirs[i]["wall_s"] for i in range(n)]
    return {"rows": rows, "windows": ((1, w), (n - w + 1, n)),
            "ratio": {"median": statistics.median(ratio), "min": min(ratio), "max": max(ratio), "per_batch": ratio}}


def _fmt(x: float) -> str:
    return "-" if x is None or math.isnan(x) else f"{x:.4f}"


def to_markdown(summary: dict, meta: dict) -> str:
    (a, b), (c, d) = summary["windows"]
    r = summary["ratio"]
    lines = [
        f"MCLRec, ours (jaxrec) vs the authors' code (QinHsiu/MCLRec), Amazon_Beauty, first {meta['batches']} "
        f"training batches, B = 256, pinned to core(s) {meta['cores']} ({meta['threads']} thread(s) each side), "
        f"ours ragged_width = {meta['ragged_width']}.",
        "",
        f"| quantity | theirs {a}-{b} | ours {a}-{b} | theirs {c}-{d} | ours {c}-{d} |",
        "|---|---|---|---|---|",
    ]
    for row in summary["rows"]:
        lines.append(f"| {row['label']} | {_fmt(row['theirs_first'])} | {_fmt(row['ours_first'])} | "
                     f"{_fmt(row['theirs_last'])} | {_fmt(row['ours_last'])} |")
    lines += [
        "",
        f"Wall time per batch (data loading included), ours / theirs: median {r['median']:.3f}, "
        f"min {r['min']:.3f}, max {r['max']:.3f} (ours median {meta['ours_median_s']:.2f} s, theirs median "
        f"{meta['theirs_median_s']:.2f} s); load average before {meta['load_before']}, after {meta['load_after']}.",
        f"Ours: compile {meta['compile_s']:.1f} s, setup (load + init) {meta['ours_setup_s']:.1f} s; theirs: setup "
        f"(RecBole dataset + loaders + model) {meta['theirs_setup_s']:.1f} s. One run.",
    ]
    return "\n".join(lines) + "\n"


def init_terms(M, model, state, batch: dict, key) -> dict:
    """Ours, term by term, at ``state`` on ``batch`` with the step's own views and first dropout key (the split
    the step's aux does not log): ``L_con`` of ``(h1, z2), (h2, z1), (z1, z2), (h1, h2)``, ``R`` of the first
    three, and the mean norms of ``h`` and ``z``. Run once at init, outside the timing."""
    import jax
    import jax.numpy as jnp

    from jaxrec import augment

    c = model.config
    k_aug, k1, _, _ = jax.random.split(key, 4)
    v1, v2 = augment.two_views(k_aug, batch["seq"], c.crop_ratio, c.mask_ratio, c.reorder_ratio)
    b = batch["seq"].shape[0]
    hs = M.encode_train(model, state.theta, jnp.concatenate([batch["seq"], v1, v2]), k1)
    h1, h2 = hs[b:2 * b], hs[2 * b:]
    p1, p2 = state.lam["aug1"], state.lam["aug2"]
    z1, z2 = model.augmenter.apply({"params": p1}, h1), model.augmenter.apply({"params": p2}, h2)
    reg = lambda a, z: float(M.contrastive_regularizer(a, z, per_row=c.reg_per_row))  # noqa: E731
    return {"L_con(h1,z2)": float(M.nt_xent(h1, z2)), "L_con(h2,z1)": float(M.nt_xent(h2, z1)),
            "L_con(z1,z2)": float(M.nt_xent(z1, z2)), "L_con(h1,h2)": float(M.nt_xent(h1, h2)),
            "R(h1,z2)": reg(h1, z2), "R(h2,z1)": reg(h2, z1), "R(z1,z2)": reg(z1, z2),
            "h_norm": float(jnp.linalg.norm(h1, axis=1).mean()), "z_norm": float(jnp.linalg.norm(z1, axis=1).mean())}


def _taskset(cores: str) -> list[str]:
    return ["taskset", "-c", cores] if cores else []


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--authors", required=True, help="path to a checkout of QinHsiu/MCLRec")
    p.add_argument("--torch-python", default=os.environ.get("MCLREC_TORCH_PYTHON", "python3"),
                   help="a Python with torch + RecBole's deps (default $MCLREC_TORCH_PYTHON or python3)")
    p.add_argument("--batches", type=int, default=50)
    p.add_argument("--threads", type=int, default=1, help="threads per side (torch.set_num_threads, XLA)")
    p.add_argument("--cores", default=None, help="taskset core list for both sides (default: 0..threads-1)")
    p.add_argument("--ragged-width", type=int, default=0,
                   help="ours: short-row width (0 = full width 50, equal to theirs; the preset uses 16)")
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--out", default=str(ROOT / "results"))
    p.add_argument("--tag", default="", help="suffix of the output names (authors_side_by_side<tag>.json / .md)")
    p.add_argument("--no-save", action="store_true")
    args = p.parse_args(argv)
    if args.batches < 1 or args.threads < 1:
        p.error("--batches and --threads must be positive")
    cores = args.cores if args.cores is not None else ",".join(str(i) for i in range(args.threads))
    if cores:
        os.sched_setaffinity(0, {int(c) for c in cores.split(",")})
    if args.threads == 1:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1").strip()
    load_before = [round(x, 2) for x in os.getloadavg()]

    # ---- theirs: start the driver, wait for its setup
    cmd = _taskset(cores) + [args.torch_python, str(DRIVER), "--authors", args.authors, "--batches",
                             str(args.batches), "--threads", str(args.threads)]
    drv = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)

    def recv(kind):
        line = drv.stdout.readline()
        if not line:
            raise RuntimeError(f"the authors' driver exited (rc {drv.poll()}); see its stderr above")
        msg = json.loads(line)
        if msg.get("event") != kind:
            raise RuntimeError(f"expected {kind!r} from the driver, got {msg}")
        return msg

    ready = recv("ready")
    print(f"theirs: torch {ready['torch']}, numpy {ready['numpy']}, shims {ready['shims']}, setup "
          f"{ready['setup_s']:.1f} s; {ready['n_users']} users, {ready['n_items']} items, {ready['n_inters']} "
          f"interactions, {ready['n_train']} training instances", flush=True)

    # ---- ours
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxrec.data import load_sequences
    from jaxrec.methods import mclrec as M

    t = time.perf_counter()
    cfg = M.preset("mclrec", ragged_width=args.ragged_width)
    data = M.load(cfg, "Amazon_Beauty", args.data_dir, seed=0)
    seqs = load_sequences("Amazon_Beauty", args.data_dir)
    lengths = (data["train_seq"] != 0).sum(1)
    raw = seqs.item_ids[data["train_target"]] if seqs.item_ids is not None else data["train_target"]
    mine = {"n_users": len(data["valid_target"]), "n_items": data["n_items"],
            "n_inters": int(sum(len(s) for s in seqs.seqs)), "n_train": len(data["train_target"]),
            "train_target_sum": int(np.asarray(raw, dtype=np.int64).sum()), "train_length_sum": int(lengths.sum())}
    same = {k: (mine[k] == ready[k]) for k in mine}
    print(f"ours: {mine}; equal to theirs: {same}", flush=True)
    meth = M.method(cfg, data)
    model = M.build(cfg, data["n_items"])
    state = meth.init(jax.random.PRNGKey(0))
    jax.block_until_ready(state)
    ours_setup_s = time.perf_counter() - t

    seed, epoch, bs = 0, 0, cfg.batch_size
    t = time.perf_counter()
    perm = np.random.default_rng((seed, epoch)).permutation(len(data["train_target"]))
    ekey = jax.random.fold_in(jax.random.PRNGKey(seed), epoch)
    n_b = len(perm) // bs  # the epoch's ragged check (ragged_flag, host side, once per epoch as in training)
    flag = M.ragged_flag(cfg, data["train_seq"][perm[:n_b * bs].reshape(n_b, bs)])
    ours_shuffle_s = time.perf_counter() - t

    def batch_of(i):  # batch i of epoch_batches(data, seed, epoch, bs, config=cfg), one at a time
        idx = perm[i * bs:(i + 1) * bs]
        b = {"seq": jnp.asarray(data["train_seq"][idx]), "target": jnp.asarray(data["train_target"][idx])}
        return (b if flag is None else dict(b, ragged=flag)), jax.random.fold_in(ekey, i)

    ref = M.epoch_batches(data, seed, epoch, bs, max_batches=2, config=cfg)
    b1, k1 = batch_of(1)
    assert np.array_equal(np.asarray(ref["seq"][1]), np.asarray(b1["seq"])) and \
        np.array_equal(np.asarray(ref["key"][1]), np.asarray(k1)), "per-batch preparation != epoch_batches"
    b0, k0 = batch_of(0)
    t = time.perf_counter()
    step = jax.jit(M.make_step(model, jit=False)).lower(state, b0, k0).compile()
    compile_s = time.perf_counter() - t
    print(f"ours: compile {compile_s:.1f} s, setup {ours_setup_s:.1f} s; load {os.getloadavg()[0]:.2f}", flush=True)
    terms0 = init_terms(M, model, state, b0, k0)
    print("ours at init, batch 1, term by term: " + ", ".join(f"{k} {v:.3f}" for k, v in terms0.items()), flush=True)

    # ---- alternate
    recv_epoch = None
    ours, theirs = [], []
    for i in range(args.batches):
        t0 = time.perf_counter()
        batch, key = batch_of(i)
        t1 = time.perf_counter()
        state, aux = step(state, batch, key)
        aux = jax.device_get(jax.block_until_ready(aux))
        t2 = time.perf_counter()
        ours.append({"i": i, "wall_s": t2 - t0, "data_s": t1 - t0, "aux": {k: float(v) for k, v in aux.items()}})
        drv.stdin.write("next\n")
        drv.stdin.flush()
        if recv_epoch is None:
            recv_epoch = recv("epoch")
        rec = recv("batch")
        rec["load1"] = os.getloadavg()[0]
        theirs.append(rec)
        print(f"batch {i + 1:3d}: ours {ours[-1]['wall_s']:6.2f} s (loss {ours[-1]['aux']['loss']:.4f}, "
              f"phi {ours[-1]['aux']['phi_loss']:.3f}), theirs {rec['wall_s']:6.2f} s (loss "
              f"{rec['stages']['step3']['loss']:.4f}, phi {rec['stages']['step2']['loss']:.3f}); ratio "
              f"{ours[-1]['wall_s'] / rec['wall_s']:.3f}; load {rec['load1']:.2f}", flush=True)
    drv.stdin.close()
    recv("done")
    drv.wait(timeout=60)
    load_after = [round(x, 2) for x in os.getloadavg()]

    summary = summarise(ours, theirs)
    meta = {"batches": args.batches, "cores": cores, "threads": args.threads, "ragged_width": args.ragged_width,
            "compile_s": compile_s, "ours_setup_s": ours_setup_s, "theirs_setup_s": ready["setup_s"],
            "ours_shuffle_s": ours_shuffle_s, "theirs_shuffle_s": recv_epoch["shuffle_s"],
            "ours_median_s": statistics.median(r["wall_s"] for r in ours),
            "theirs_median_s": statistics.median(r["wall_s"] for r in theirs),
            "load_before": load_before, "load_after": load_after, "jax": jax.__version__,
            "backend": jax.default_backend(),
            "theirs_env": {k: ready[k] for k in ("torch", "numpy", "shims", "threads")},
            "data": {"ours": mine, "theirs": {k: ready[k] for k in mine}, "equal": same,
                     "theirs_item_ids_identity": ready["item_ids_identity"]},
            "ours_init_terms": terms0, "theirs_batch1_stage1": theirs[0]["stages"].get("step1"),
            "theirs_config": ready["config"], "ours_config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
            "command": " ".join([sys.executable] + sys.argv)}
    md = to_markdown(summary, meta)
    print(md)
    if not args.no_save:
        out = Path(args.out) / "mclrec" / "bench_cpu"
        out.mkdir(parents=True, exist_ok=True)
        stem = out / f"authors_side_by_side{args.tag}"
        stem.with_suffix(".json").write_text(json.dumps(
            {"meta": meta, "summary": summary, "ours": ours, "theirs": theirs}, indent=1, default=str))
        stem.with_suffix(".md").write_text(md)
        print(f"wrote {stem}.json and .md")


if __name__ == "__main__":
    main()
