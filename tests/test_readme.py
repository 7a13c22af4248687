"""The README's promise: its set-up and test commands are the ones CI runs."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands():
    text = (ROOT / "README.md").read_text()
    block = text.split("```sh", 1)[1].split("```", 1)[0]
    return [line.split("#", 1)[0].strip() for line in block.strip().splitlines()]


def test_readme_has_three_commands_on_first_screen():
    text = (ROOT / "README.md").read_text()
    assert text.index("```sh") < 1500
    setup, main_job, tests = _readme_commands()
    assert "pip install" in setup and "dfa-engine rtl" in main_job and "pytest" in tests


def test_ci_runs_the_readme_commands():
    setup, _, tests = _readme_commands()
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert setup in ci
    assert tests in ci
