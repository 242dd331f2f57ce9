"""The authors' MCLRec trainer (QinHsiu/MCLRec, RecBole-based, PyTorch) as a batch-by-batch server for
``benchmarks/mclrec_authors.py``. Run under a Python that has torch + RecBole's dependencies (never the
jaxrec venv); it imports their modules from ``--authors`` (their checkout) and copies none of their code.

It builds their run exactly as ``run_seq.py`` / ``recbole.quick_start.run_recbole`` do for
``scripts/train_beauty.sh`` (``seq.yaml`` + ``properties/model/MCLRec.yaml`` + that script's flags, on
CPU: ``gpu_id=-1, use_gpu=False``; seed 2020 from ``seq.yaml``), then calls their
``Trainer._train_epoch`` once on a wrapper of their training loader. The wrapper's ``__next__`` waits
for a ``next`` line on stdin before it fetches a batch (their ``SequentialDataLoader``: slice of the
pre-processed prefixes + ``mclrec_aug``, the python-loop crop / mask / reorder), so the parent can
alternate batches with its own; when their trainer asks for the following batch (after stage 1, stage 2,
stage 1 again) the wrapper writes one JSON line for the finished batch: wall time (data + stages), the
data-loading time, each stage's time, and the losses each stage computed, read with forward hooks and
method wrappers on the model instance (``loss_fct`` -> L_rec, ``nce_fct`` -> L_cl1, ``info_nce`` -> each
InfoNCE term, ``meta_contrast_rl`` -> each R term, ``calculate_loss`` -> the stage's total).

Runtime shims for today's numpy / torch (their files are not edited): where numpy lacks the removed aliases
``np.bool``, ``np.float``, ``np.long``, ``np.int`` they are set to ``bool``, ``float``, ``np.int64``, ``int``
before their modules are imported (numpy 2.x: ``np.float`` and ``np.int``; the ``ready`` line lists them).
Under pandas 3 their ``feat[field].fillna(value=0, inplace=True)`` (dataset.py) warns and does nothing
(copy-on-write); Beauty's two token columns have no missing values, so nothing changes.

Protocol (stdout is reserved for it; everything else printed goes to stderr): one JSON line
``{"event": "ready", ...}`` after setup, then per ``next`` one ``{"event": "batch", ...}`` line.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--authors", required=True, help="path to their checkout (QinHsiu/MCLRec)")
    p.add_argument("--batches", type=int, default=50)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--workdir", default="/tmp/mclrec_authors_run", help="their logs / checkpoint dir")
    args = p.parse_args(argv)

    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def send(obj):
        proto.write(json.dumps(obj) + "\n")
        proto.flush()

    t_setup = time.perf_counter()
    authors = os.path.abspath(args.authors)
    sys.path.insert(0, authors)
    import numpy as np
    shims = []
    for name, val in (("bool", bool), ("float", float), ("long", np.int64), ("int", int)):
        try:
            getattr(np, name)
        except AttributeError:
            setattr(np, name, val)
            shims.append(f"np.{name}")
    import torch
    torch.set_num_threads(args.threads)
    sys.argv = [sys.argv[0]]  # their Config also parses sys.argv
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, get_trainer, init_seed

    os.makedirs(args.workdir, exist_ok=True)
    # scripts/train_beauty.sh: --epochs=100 --hidden_dropout_prob=0.5 --attn_dropout_prob=0.5 --use_rl=1
    # --joint=0 train_batch_size=256 --lmd=0. --beta=0.05 --sim='dot'
    flags = dict(epochs=100, hidden_dropout_prob=0.5, attn_dropout_prob=0.5, use_rl=1, joint=0,
                 train_batch_size=256, lmd=0.0, beta=0.05, sim="dot")
    config = Config(model="MCLRec", dataset="Amazon_Beauty", config_file_list=[os.path.join(authors, "seq.yaml")],
                    config_dict=dict(flags, gpu_id="-1", use_gpu=False, show_progress=False,
                                     data_path=os.path.join(authors, "dataset") + "/",
                                     checkpoint_dir=os.path.join(args.workdir, "Checkpoint"),
                                     log_root=os.path.join(args.workdir, "log") + "/"))
    init_seed(config["seed"], config["reproducibility"])
    config["log_dir"] = args.workdir
    dataset = create_dataset(config)
    train_data, _, _ = data_preparation(config, dataset)
    model = get_model(config["model"])(config, train_data).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    setup_s = time.perf_counter() - t_setup

    # ---- the data, for the parent's check that both sides hold the same sequences
    inter = dataset.inter_feat
    tok = dataset.field2id_token["item_id"]
    identity = all(str(t) == str(i) for i, t in enumerate(tok) if i > 0)
    item_field = dataset.inter_feat["item_id"].numpy()
    targets = item_field[train_data.target_index]
    lengths = np.asarray(train_data.item_list_length)
    tokens = np.array([int(t) for t in tok[1:]])
    send({"event": "ready", "setup_s": setup_s, "torch": torch.__version__, "numpy": np.__version__,
          "shims": shims, "threads": torch.get_num_threads(), "device": str(config["device"]),
          "n_users": int(dataset.user_num) - 1, "n_items": int(dataset.item_num) - 1, "n_inters": int(len(inter)),
          "n_train": int(train_data.pr_end), "item_ids_identity": bool(identity),
          "train_target_sum": int(tokens[targets - 1].sum()), "train_length_sum": int(lengths.sum()),
          "config": {k: config[k] for k in ("seed", "train_batch_size", "learning_rate", "lmd", "beta", "tau", "sim",
                                            "use_rl", "joint", "hidden_size", "n_layers", "n_heads", "inner_size",
                                            "hidden_dropout_prob", "attn_dropout_prob", "MAX_ITEM_LIST_LENGTH",
                                            "crop_ratio", "mask_ratio", "reorder_ratio", "loss_type")}})

    # ---- loss records (hooks / wrappers on the instance; their functions run unchanged)
    cur = {"stage": None, "rec": None}

    def put(key, value):
        st = cur["rec"]["stages"].setdefault(cur["stage"], {})
        if key in ("cl_terms", "r_terms"):
            st.setdefault(key, []).append(value)
        else:
            st[key] = value

    model.loss_fct.register_forward_hook(lambda m, i, o: put("l_rec", o.item()))
    model.nce_fct.register_forward_hook(lambda m, i, o: put("l_cl1", o.item()))
    orig_info_nce, orig_rl, orig_calc = model.info_nce, model.meta_contrast_rl, model.calculate_loss

    def info_nce(*a, **k):
        logits, labels = orig_info_nce(*a, **k)
        with torch.no_grad():
            put("cl_terms", torch.nn.functional.cross_entropy(logits, labels).item())
        return logits, labels

    def meta_contrast_rl(*a, **k):
        out = orig_rl(*a, **k)
        put("r_terms", out.item())
        return out

    def calculate_loss(interaction, meta_aug=None, mode=None):
        cur["stage"] = mode
        cur["rec"]["t_stage_start"][mode] = time.perf_counter()
        out = orig_calc(interaction, meta_aug, mode)
        put("loss", out.item())
        return out

    model.info_nce, model.meta_contrast_rl, model.calculate_loss = info_nce, meta_contrast_rl, calculate_loss

    class Stepper:
        """Their training loader, one batch per ``next`` line on stdin, timed."""

        def __init__(self, loader, n):
            self.loader, self.n, self.i = loader, n, 0

        def __len__(self):
            return self.n

        def __iter__(self):
            t = time.perf_counter()
            self.it = iter(self.loader)  # their epoch shuffle
            send({"event": "epoch", "shuffle_s": time.perf_counter() - t})
            return self

        def _finish(self):
            rec = cur["rec"]
            t_end = time.perf_counter()
            ts = rec.pop("t_stage_start")
            bounds = [ts.get("step1"), ts.get("step2"), ts.get("step3"), t_end]
            stage_s = {f"step{j + 1}": bounds[j + 1] - bounds[j] for j in range(3) if None not in bounds[j:j + 2]}
            for st in rec["stages"].values():  # L_cl2 = the three meta InfoNCE terms (the first one is L_cl1)
                terms = st.get("cl_terms", [])
                st["l_cl2"] = sum(terms[1:]) if len(terms) == 4 else float("nan")
                st["cl2_terms"] = terms[1:]
                st["reg"] = sum(st.get("r_terms", []))  # R without the 0.1 (meta_rl multiplies by 0.1)
                st.pop("cl_terms", None)
            rec.update(event="batch", wall_s=t_end - rec.pop("t0"), stage_s=stage_s)
            send(rec)
            cur["rec"] = None

        def __next__(self):
            if cur["rec"] is not None:
                self._finish()
            if self.i >= self.n:
                raise StopIteration
            line = sys.stdin.readline().strip()
            if line != "next":
                raise StopIteration
            t0 = time.perf_counter()
            batch = next(self.it)
            cur["rec"] = {"i": self.i, "t0": t0, "data_s": time.perf_counter() - t0, "stages": {},
                          "t_stage_start": {}, "batch_size": int(batch.length)}
            self.i += 1
            return batch

    trainer._train_epoch(Stepper(train_data, args.batches), 0)
    send({"event": "done"})


if __name__ == "__main__":
    main()
