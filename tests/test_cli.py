"""The command line a researcher meets (issue "Command lines a researcher can trust"), through subprocesses
as a user types it: every flag honoured or refused in one line, library errors in one line, fast --help,
the quickstart leaves git status clean, failed grid points recorded, the typed command and the total wall
time recorded. The checks run on every experiment built on ``jaxrec.cli.Spec``."""
import dataclasses
import importlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import jax
import pytest

from jaxrec import cli

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted(p.stem for p in (ROOT / "experiments").glob("*.py") if p.stem != "__init__")
SPECS = {e: getattr(importlib.import_module(f"experiments.{e}"), "SPEC", None) for e in EXPERIMENTS}
RUNNER = [e for e, s in SPECS.items() if s is not None]


def run(*argv, cwd=ROOT, env=None, timeout=300):
    e = {**os.environ, "JAXREC_QUIET": "1", **(env or {})}
    return subprocess.run([sys.executable, *argv], cwd=cwd, env=e, capture_output=True, text=True,
                          timeout=timeout)


def _fields(exp):
    return {f.name for f in dataclasses.fields(SPECS[exp].config)}


# ------------------------------------------------------------------------------- invalid values: exit 2
BAD = [("--epochs", "-5"), ("--epochs", "0"), ("--dim", "0"), ("--lr", "-0.01"), ("--lr", "1e10"),
       ("--lr", "nan"), ("--meta-lr", "1e30"), ("--batch-size", "0"), ("--seeds", "0")]


@pytest.mark.parametrize("exp", RUNNER)
def test_invalid_values_refused_in_one_line(exp, capsys):
    tried = 0
    for flag, value in BAD:
        name = flag[2:].replace("-", "_")
        if name != "seeds" and name not in _fields(exp):
            continue
        tried += 1
        with pytest.raises(SystemExit) as e:
            cli.parse(SPECS[exp], [flag, value])
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2, (flag, value)
        shown = value if name == "seeds" else f"{float(value):g}".replace("inf", "inf")
        assert len(err.splitlines()) == 1 and flag in err and shown in err and "use" in err, err
    assert tried >= 3


@pytest.mark.parametrize("exp", RUNNER)
def test_unusable_dataset_refused_naming_the_accepted_ones(exp, capsys):
    for name in ("adult", "lastfm", "ml-1m-melu", "no-such-set"):
        if name in SPECS[exp].datasets:
            continue
        with pytest.raises(SystemExit) as e:
            cli.parse(SPECS[exp], ["--dataset", name])
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and len(err.splitlines()) == 1
        assert name in err and SPECS[exp].datasets[0] in err


def test_bad_values_exit_2_before_jax_loads():
    r = run("-c", "import sys, experiments.mf_bpr as m\n"
                  "try:\n    m.main(['--epochs', '-5'])\nexcept SystemExit as e:\n"
                  "    print(e.code, 'jax' in sys.modules)")
    assert r.stdout.split() == ["2", "False"], r.stdout + r.stderr
    assert r.stderr.strip().count("\n") == 0 and "--epochs" in r.stderr


# ------------------------------------------------------------------------------- every flag is applied
def test_single_lr_and_l2_values_are_applied():
    r = run("-m", "experiments.mf_bpr", "--quick", "--seeds", "1", "--no-save", "--lr", "0.05", "--l2", "0.02")
    assert r.returncode == 0, r.stderr
    assert "lr=0.05 l2=0.02" in r.stdout
    d = run("-m", "experiments.mf_bpr", "--quick", "--seeds", "1", "--no-save")
    mf = lambda out: next(ln for ln in out.splitlines() if ln.startswith("| MF-BPR |"))  # noqa: E731
    assert mf(r.stdout) != mf(d.stdout)


@pytest.mark.parametrize("exp", RUNNER)
def test_every_flag_has_help_and_one_default(exp):
    t = time.perf_counter()
    r = run("-m", f"experiments.{exp}", "--help")
    elapsed = time.perf_counter() - t
    assert r.returncode == 0, r.stderr
    assert elapsed < 3.0, f"--help took {elapsed:.1f}s"  # < 1 s on an idle machine; slack for a loaded CI
    parser = cli.build_parser(SPECS[exp])
    for action in parser._actions:
        assert action.help, f"{exp}: {action.option_strings} has no help"
        assert action.help.count("(default:") <= 1, action.help
    assert "(default: method default)" not in r.stdout


def test_help_does_not_import_jax():
    r = run("-c", "import sys, contextlib, io, experiments.mf_bpr as m\n"
                  "with contextlib.redirect_stdout(io.StringIO()):\n"
                  "    try:\n        m.main(['--help'])\n    except SystemExit:\n        pass\n"
                  "print('jax' in sys.modules)")
    assert r.stdout.strip() == "False", r.stdout + r.stderr


# ------------------------------------------------------------------------------- library errors: exit 1
def test_data_error_is_one_line_exit_1_and_debug_shows_traceback(tmp_path):
    r = run("-m", "experiments.mf_bpr", "--dataset", "ml-100k", "--data-dir", str(tmp_path), "--no-save")
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "error:" in lines[0] and "Traceback" not in r.stderr, r.stderr
    r = run("-m", "experiments.mf_bpr", "--dataset", "ml-100k", "--data-dir", str(tmp_path), "--no-save",
            "--debug")
    assert r.returncode == 1 and "Traceback" in r.stderr


# ------------------------------------------------------------------------------- quickstart and records
def _status():
    out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=ROOT, capture_output=True,
                         text=True).stdout
    return {ln for ln in out.splitlines() if "results/" in ln or "runs/" in ln}


def test_quickstart_leaves_git_status_clean():
    before = _status()
    r = run("-m", "experiments.mf_bpr", timeout=600)  # README's first command, as typed
    assert r.returncode == 0, r.stderr
    assert "| MF-BPR |" in r.stdout
    assert _status() == before
    assert (ROOT / "runs" / "mf_bpr" / "synthetic" / "table_main.png").exists()


def test_results_record_the_typed_command_and_total_wall_time(tmp_path):
    r = run("-m", "experiments.mf_bpr", "--quick", "--seeds", "1", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "compiling the step ..." in r.stdout and "compiled and ran the first epoch in" in r.stdout
    rec = json.loads(next((tmp_path / "mf_bpr" / "synthetic").glob("mf_*_seed0.json")).read_text())
    assert rec["command"] == f"{Path(sys.executable).name} -m experiments.mf_bpr --quick --seeds 1 --out {tmp_path}"


def test_wall_time_sums_over_a_resume(tmp_path):
    from experiments import mf_bpr as exp
    from jaxrec import method as protocol
    from jaxrec.methods import mf_bpr

    cfg = mf_bpr.MFBPRConfig(**{k: v for k, v in exp.QUICK.items()})
    data = mf_bpr.load(cfg, "synthetic", None, 0)
    m = mf_bpr.method(cfg, data)

    def slow_then_stop(seed, epoch):
        if epoch == 2:
            raise KeyboardInterrupt
        time.sleep(1.5)
        return m.batches(seed, epoch)

    with pytest.raises(KeyboardInterrupt):
        protocol.train(m._replace(batches=slow_then_stop), seed=0, epochs=4, metric="ndcg@20", ckpt_dir=tmp_path,
                       log=None)
    t = time.perf_counter()
    res = protocol.train(m, seed=0, epochs=4, metric="ndcg@20", ckpt_dir=tmp_path, log=None)
    resumed_part = time.perf_counter() - t
    assert res.wall_time_s >= resumed_part + 2.9  # the two slow epochs before the interruption count too


def test_failed_grid_point_is_recorded_and_the_grid_goes_on(tmp_path, capsys):
    """One grid point's step produces NaN (poisoned initialisation); the others run and the table says so."""
    from jaxrec import experiment
    from jaxrec.methods import mf_bpr

    class Poisoned:
        DATA_FIELDS, load, most_popular = mf_bpr.DATA_FIELDS, staticmethod(mf_bpr.load), staticmethod(mf_bpr.most_popular)

        @staticmethod
        def method(config, data):
            m = mf_bpr.method(config, data)
            if config.lr != 0.02:
                return m
            return m._replace(init=lambda k: jax.tree_util.tree_map(lambda x: x * float("nan"), m.init(k)))

    inv = cli.parse(SPECS["mf_bpr"], ["--quick", "--seeds", "1", "--out", str(tmp_path), "--lr", "0.01", "0.02"])
    runner = experiment.Runner(inv)
    runner.module = Poisoned
    text = runner.main()
    assert "lr=0.02: FAILED (FloatingPointError: training loss is nan" in text
    assert "lr=0.01: " in text and "| MF-BPR |" in text


def test_run_reads_its_cache_unless_fresh(tmp_path):
    """A second ``run`` of the same config reads the stored file (no training); ``fresh=True`` trains again."""
    from jaxrec import experiment
    from jaxrec.methods import mf_bpr

    calls = []

    class Counting:
        DATA_FIELDS, load, most_popular = mf_bpr.DATA_FIELDS, staticmethod(mf_bpr.load), staticmethod(mf_bpr.most_popular)

        @staticmethod
        def method(config, data):
            calls.append(1)
            return mf_bpr.method(config, data)

    inv = cli.parse(SPECS["mf_bpr"], ["--quick", "--seeds", "1", "--out", str(tmp_path), "--epochs", "1"])
    runner = experiment.Runner(inv)
    runner.module = Counting
    first = runner.run(runner.base, 0)
    again = runner.run(runner.base, 0)
    assert len(calls) == 1 and again["metrics"] == first["metrics"]
    fresh = runner.run(runner.base, 0, fresh=True)
    assert len(calls) == 2 and fresh["metrics"] == first["metrics"]  # deterministic: same numbers, new timing


def test_a_tuned_run_is_not_trained_again_for_its_table(tmp_path):
    """With ``--no-save`` there is no results file to read: a table's ``seeds`` on the tuned config (and a plot
    that asks for every grid point again) must take the runs ``tune`` just trained, not train them again."""
    from jaxrec import experiment
    from jaxrec.methods import mf_bpr

    calls = []

    class Counting:
        DATA_FIELDS, load, most_popular = mf_bpr.DATA_FIELDS, staticmethod(mf_bpr.load), staticmethod(mf_bpr.most_popular)

        @staticmethod
        def method(config, data):
            calls.append(config.lr)
            return mf_bpr.method(config, data)

    inv = cli.parse(SPECS["mf_bpr"], ["--quick", "--seeds", "1", "--no-save", "--epochs", "1", "--lr", "0.01", "0.02"])
    runner = experiment.Runner(inv)
    runner.module = Counting
    best, rows = runner.tune()
    recs = runner.seeds(best)
    again = [runner.run(dataclasses.replace(runner.base, **p), 0) for p in runner.grid]
    assert sorted(calls) == [0.01, 0.02], calls  # two grid points trained once each; nothing trained again
    assert recs[0] is next(r for r, p in zip(again, runner.grid) if p["lr"] == best.lr)
    runner.run(best, 0, fresh=True)
    assert len(calls) == 3  # fresh=True still trains


# ------------------------------------------------------------------------------- notebooks
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebooks_are_committed_with_outputs(path):
    cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    with_output = [c for c in cells if c.get("outputs")]
    assert len(with_output) >= len(cells) // 2, f"{path.name}: {len(with_output)} of {len(cells)} cells have output"
    assert any("image/png" in o.get("data", {}) for c in cells for o in c.get("outputs", [])), \
        f"{path.name} shows no plot"
