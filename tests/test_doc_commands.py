"""Every experiment command written in the docs (README.md, RESULTS.md, docs/*.md, the notebooks' text)
is accepted by that experiment's command line today: a renamed or removed flag fails here, not for the
reader who copies the command that reproduces a table."""
import contextlib
import importlib
import io
import json
import re
import shlex
from pathlib import Path

import pytest

from jaxrec import cli

ROOT = Path(__file__).resolve().parents[1]
COMMAND = re.compile(r"python3? (?:-m experiments\.(\w+)|experiments/(\w+)\.py)(.*)")
FOR_LOOP = re.compile(r"for (\w+) in ([^;]+); do")


def _doc_texts():
    files = [ROOT / "README.md", ROOT / "RESULTS.md", *sorted((ROOT / "docs").glob("*.md"))]
    for f in files:
        yield f.name, f.read_text()
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(nb.read_text())["cells"]
        yield nb.name, "\n".join("".join(c["source"]) for c in cells)


def _expand(args: str, loops: dict) -> list[str]:
    """``args`` with a shell loop variable ``$v`` replaced by each value of ``for v in ...; do``."""
    names = re.findall(r"\$(\w+)", args)
    if not names:
        return [args]
    unknown = [n for n in names if n not in loops]
    assert not unknown, f"command uses ${unknown[0]} without a 'for {unknown[0]} in ...; do' on its line: {args}"
    out = [args]
    for n in dict.fromkeys(names):
        out = [a.replace(f"${n}", v) for a in out for v in loops[n]]
    return out


def documented_commands():
    """``(where, experiment, argv)`` for every runnable experiment command in the docs. Usage sketches with
    ``...`` are left out; ``[--flag value]`` brackets (optional parts) are kept as arguments."""
    found = {}
    for name, text in _doc_texts():
        text = text.replace("\\\n", " ")
        for lineno, line in enumerate(text.splitlines(), 1):
            loops = {m.group(1): m.group(2).split() for m in FOR_LOOP.finditer(line)}
            for seg in re.split(r"`|;|&&|\|\||\|", line):
                m = COMMAND.search(seg)
                if not m:
                    continue
                exp = m.group(1) or m.group(2)
                args = re.split(r"\s#|\s\d?>", m.group(3))[0]
                if "..." in args:
                    continue
                for a in _expand(args.replace("[", " ").replace("]", " "), loops):
                    argv = shlex.split(a)
                    found.setdefault((exp, tuple(argv)), f"{name}:{lineno}")
    return [(where, exp, list(argv)) for (exp, argv), where in found.items()]


COMMANDS = documented_commands()


def test_docs_have_commands_for_every_experiment():
    exps = {exp for _, exp, _ in COMMANDS}
    assert {"mf_bpr", "mal", "meta_wrapper", "mclrec"} <= exps, exps
    assert len(COMMANDS) >= 40  # RESULTS.md gives the command of every table


@pytest.mark.parametrize("where,exp,argv", COMMANDS, ids=[f"{w}:{e}" for w, e, _ in COMMANDS])
def test_documented_command_parses(where, exp, argv):
    module = importlib.import_module(f"experiments.{exp}")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            if hasattr(module, "SPEC"):  # a runner experiment: the full check (flags, values, dataset)
                cli.parse(module.SPEC, argv)
            else:
                module.build_parser().parse_args(argv)
        except SystemExit:
            pytest.fail(f"{where}: `{exp} {' '.join(argv)}` is rejected by experiments.{exp}: {err.getvalue()}")


def test_a_stale_flag_is_caught():
    """The check is not vacuous: an unknown flag and a value outside a flag's choices are rejected."""
    parser = importlib.import_module("experiments.mal").build_parser()
    for argv in (["--table", "main", "--no-such-flag"], ["--table", "nonsense"]):
        with contextlib.redirect_stderr(io.StringIO()), pytest.raises(SystemExit):
            parser.parse_args(argv)
