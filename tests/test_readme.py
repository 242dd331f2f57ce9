"""README.md opens with the two commands the project promises, and CI runs exactly the second one."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands():
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```bash\n(.+?)\n```", text)


def test_readme_opens_with_two_commands():
    cmds = _readme_commands()
    assert len(cmds) >= 2
    assert "python -m experiments." in cmds[0]
    assert "pytest" in cmds[1] and ".[test]" in cmds[1]


def test_ci_runs_readme_test_command_verbatim():
    ci_lines = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()]
    runnable = [ln for ln in ci_lines if ln and not ln.startswith("#")]
    assert _readme_commands()[1].strip() in runnable, "the README test command must appear verbatim in .ci/run"
