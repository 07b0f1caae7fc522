"""Every shell command README.md and docs/ show, met as a newcomer would meet it.

Each `lwd`, `make`, `prefect`, `mlflow` and `python` command in a shell block or an inline code span is
collected. Every one is checked against the real program's argument parser (a renamed flag, a removed
command or a missing file fails); those cheap enough run for real in a fresh data directory, and a
transcript's shown output must match. Commands that need a server are parse-checked and reported as
skipped with the reason; long runs are parse-checked here and run at tiny size by the tests named.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# The changelog records commands as they were; every other page shows commands to run today.
DOCS = [ROOT / "README.md", *sorted(path for path in (ROOT / "docs").rglob("*.md") if path.name != "CHANGELOG.md")]
SHELL_BLOCKS = {"", "bash", "sh", "shell", "console"}
FENCE = re.compile(r"^```([\w-]*)\n(.*?)^```", re.S | re.M)
INLINE = re.compile(r"`([^`\n]+)`")
COMMAND = re.compile(r"^(?:[A-Z][A-Z0-9_]*=\S*\s+)*(?:uv run (?:--\S+\s+)*)?(?:lwd|make|prefect|mlflow|python)(?:\s|$)")
LABEL = re.compile(r"^[A-Z][\w ]*:\s{2,}")  # "Prefect UI:  uv run prefect server start"
ANNOTATION = re.compile(r"\s+(?:#|->)\s.*$")  # "make test   # the test suite", "... -> http://..."
LWD = Path(sys.executable).parent / "lwd"  # the installed console script, as `uv run lwd` finds it
REPO_PATH = re.compile(r"^(?:configs|bench|docs|deployments|infra|flows|tests)/")


@dataclass(frozen=True)
class Documented:
    text: str
    where: str  # the pages that show it
    shown_output: tuple[str, ...] = ()  # a transcript's output lines

    @property
    def argv(self) -> list[str]:
        words = shlex.split(self.text)
        while words and re.match(r"^[A-Z][A-Z0-9_]*=", words[0]):
            words.pop(0)
        if words[:2] == ["uv", "run"]:
            words = words[2:]
            while words and words[0].startswith("--"):
                words.pop(0)
        return words

    @property
    def env(self) -> dict[str, str]:
        assignments = re.match(r"^((?:[A-Z][A-Z0-9_]*=\S*\s+)*)", self.text).group(1).split()
        return dict(assignment.split("=", 1) for assignment in assignments)


def _expand(command: str) -> list[str]:
    """Usage notation to commands: `[--wait S]` is shown with its option, `up|status` as each choice."""
    command = re.sub(r"\[([^\]]*)\]", r"\1", command)
    words = command.split()
    for index, word in enumerate(words):
        if "|" in word and not word.startswith(("'", '"')):
            return [alternative for choice in word.split("|")
                    for alternative in _expand(" ".join([*words[:index], choice, *words[index + 1:]]))]
    return [command]


def _commands(snippet: str) -> list[str]:
    snippet = ANNOTATION.sub("", LABEL.sub("", snippet.strip().removeprefix("$ ")))
    # A program's bare name (`lwd` in "the `lwd` CLI") names it; a command has arguments.
    return [expanded for part in snippet.split("&&") if COMMAND.match(part.strip()) and len(part.split()) > 1
            for expanded in _expand(part.strip())]


def documented_commands() -> list[Documented]:
    """Each distinct command once, with every page that shows it."""
    found: dict[str, Documented] = {}

    def add(command: str, where: str, shown: tuple[str, ...] = ()) -> None:
        earlier = found.get(command)
        if earlier is None:
            found[command] = Documented(command, where, shown)
        elif where not in earlier.where.split(", "):
            found[command] = Documented(command, f"{earlier.where}, {where}", earlier.shown_output or shown)

    for path in DOCS:
        text = path.read_text()
        name = str(path.relative_to(ROOT))
        for language, body in FENCE.findall(text):
            if language not in SHELL_BLOCKS:
                continue
            lines = body.splitlines()
            transcript = any(line.startswith("$ ") for line in lines)
            for index, line in enumerate(lines):
                if transcript and not line.startswith("$ "):
                    continue
                shown: list[str] = []
                for after in lines[index + 1:] if transcript else ():
                    if after.startswith("$ "):
                        break
                    shown.append(after)
                for command in _commands(line):
                    add(command, name, tuple(shown))
        for span in INLINE.findall(FENCE.sub("", text)):
            for command in _commands(span):
                add(command, name)
    return list(found.values())


def _lwd_parse(args: list[str]) -> tuple[tuple[str, ...], str | None]:
    """What `lwd`'s own parser makes of these arguments, without running the command: the command's
    path (`("fleet", "up")`) and the parser's error, None when they name a real command with real
    options. A placeholder value (`--robots N`) or an argument the docs leave out (`lwd approve`) is
    usage notation, not an error."""
    import typer.main

    from flows.cli import app

    command, path = typer.main.get_command(app), ()
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            context = command.make_context("lwd", list(args))
            while hasattr(command, "resolve_command") and [*context._protected_args, *context.args]:
                name, command, rest = command.resolve_command(context, [*context._protected_args, *context.args])
                path = (*path, name)
                context = command.make_context(name, rest, parent=context)
    except Exception as error:  # typer carries its own copy of click: match by the error's kind
        kinds = {kind.__name__ for kind in type(error).__mro__}
        if "Exit" in kinds or "MissingParameter" in kinds:  # --help/--version; an argument the docs leave out
            return path, None
        if "BadParameter" in kinds and any(re.fullmatch(r"[A-Z][A-Z_]*|<[^>]+>", word) for word in args):
            return path, None  # a placeholder value (`--robots N`): usage notation
        message = error.format_message() if hasattr(error, "format_message") else str(error)
        return path, f"{type(error).__name__}: {message}"
    return path, None


# `python script.py ARGS`: argparse parses the arguments, then the script stops before doing anything.
PARSE_ONLY = (
    "import argparse, runpy, sys\n"
    "parse = argparse.ArgumentParser.parse_args\n"
    "def parse_then_stop(self, *args, **kwargs):\n"
    "    parse(self, *args, **kwargs)\n"
    "    raise SystemExit(0)\n"
    "argparse.ArgumentParser.parse_args = parse_then_stop\n"
    "sys.argv = sys.argv[1:]\n"
    "runpy.run_path(sys.argv[0], run_name='__main__')\n"
)

# `lwd` commands run for real here: each is seconds in a fresh data directory.
RUN_HERE = {(), ("config",), ("status",), ("fleet", "status"), ("keys", "generate")}
# The rest are minutes or hours at their documented size; their parser is checked here and the run
# itself is covered at tiny size by the tests named.
IN_THE_TINY_FLYWHEEL = "tests/test_flows.py: `lwd flywheel --rounds 1` on configs/tiny.yaml runs this stage's flow"
RUN_ELSEWHERE = {
    "flywheel": "tests/test_flows.py runs `lwd flywheel --rounds 1 --auto-approve` on configs/tiny.yaml",
    "experiment": "tests/test_experiment.py runs the experiment flow on a tiny config",
    "experiment-pool": "tests/test_cli.py runs it on committed experiment results",
    "ingest": "tests/test_cli.py runs it on a busy machine",
    **dict.fromkeys(("generate-offline", "label-rewards", "snapshot", "train", "evaluate", "promote", "rollout"),
                    IN_THE_TINY_FLYWHEEL),
    **dict.fromkeys(("approve", "reject", "watch-champion"), "tests/test_flows.py runs it on a tiny flywheel's versions"),
    "fleet up": "tests/test_fleet.py runs the actors and edge clients it starts",
    "import lerobot": "tests/test_lerobot.py imports the LeRobot-made fixture with it",
    "export lerobot": "tests/test_lerobot.py exports a snapshot (and opens it with LeRobot in the interop run)",
}
# Commands that start or need a long-lived server: parse-checked, then skipped with this reason.
NEEDS_A_SERVER = {
    ("prefect", "server"): "starts the Prefect UI server and runs until stopped",
    ("prefect", "deploy"): "needs a Prefect server and work pool (tests/test_deployments.py checks prefect.yaml)",
    ("prefect", "worker"): "needs a Prefect server and work pool",
    ("mlflow", "ui"): "starts the MLflow UI server and runs until stopped",
    ("python", "-m"): "serves deployments or registers automations on a Prefect server",
}
# Files a transcript assumes the user has: `bad.yaml` holds the mistake the operator guide shows.
FILES_THE_DOCS_ASSUME = {"bad.yaml": "algo:\n  batch_size: 0\n"}


def _run(argv: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=cwd, env=env)


COMMANDS = documented_commands()


def test_the_docs_show_commands_to_check():
    programs = {command.argv[0] for command in COMMANDS}
    assert {"lwd", "make", "prefect", "python"} <= programs, programs
    assert len(COMMANDS) > 30


@pytest.mark.parametrize("documented", COMMANDS, ids=[command.text for command in COMMANDS])
def test_documented_command(documented: Documented, tmp_path: Path):
    argv, where = documented.argv, documented.where
    for word in argv:
        for path in re.findall(r"[\w./-]+", word):
            if REPO_PATH.match(path) and not any(character in path for character in "<>*"):
                assert (ROOT / path).exists(), f"{where}: `{documented.text}` names {path}, which does not exist"
    program = argv[0]
    env = {**os.environ, **documented.env, "LWD_DATA_DIR": str(tmp_path / "data"),
           "PREFECT_HOME": str(tmp_path / "prefect")}
    if program == "lwd":
        path, error = _lwd_parse(argv[1:])
        assert error is None, f"{where}: `{documented.text}`: {error}"
        if path in RUN_HERE:
            _run_lwd_for_real(documented, env, tmp_path)
        else:
            assert " ".join(path) in RUN_ELSEWHERE, f"{where}: `{documented.text}`: say where this command is run"
    elif program == "make":
        result = _run(["make", "--dry-run", "--no-print-directory", *argv[1:]], env, ROOT)
        assert result.returncode == 0, f"{where}: `{documented.text}`: {result.stderr.strip()}"
    elif program in ("prefect", "mlflow"):
        # Their own help for the command: it exists, and it offers every option the docs use.
        command = list(itertools.takewhile(lambda word: not word.startswith("-"), argv[1:]))
        options = [word.split("=")[0] for word in argv[1:] if word.startswith("--")]
        result = _run([sys.executable, "-m", program, *command, "--help"], {**env, "COLUMNS": "200"}, ROOT)
        assert result.returncode == 0, f"{where}: `{documented.text}`: {result.stderr.strip()[-500:]}"
        for option in options:
            assert option in result.stdout, f"{where}: `{documented.text}`: {program} has no {option}"
        reason = NEEDS_A_SERVER.get(tuple(argv[:2]))
        assert reason, f"{where}: `{documented.text}`: say why this command cannot run here, or run it"
        pytest.skip(f"parser checked; not run: {reason}")
    elif program == "python" and argv[1] == "-m":
        import importlib.util

        assert importlib.util.find_spec(argv[2]) is not None, f"{where}: no module {argv[2]}"
        pytest.skip(f"module found; not run: {NEEDS_A_SERVER[('python', '-m')]}")
    elif program == "python":
        result = _run([sys.executable, "-c", PARSE_ONLY, *argv[1:]], env, ROOT)
        assert result.returncode == 0, f"{where}: `{documented.text}`: {result.stderr.strip()[-500:]}"
    else:  # pragma: no cover - COMMAND admits only the programs above
        pytest.fail(f"{where}: no check for {program}")


def _run_lwd_for_real(documented: Documented, env: dict[str, str], tmp_path: Path) -> None:
    for name, content in FILES_THE_DOCS_ASSUME.items():
        (tmp_path / name).write_text(content)
    # Run from a fresh directory: a repository path the command names (a config) is the repository's.
    argv = [str(LWD), *(str(ROOT / word) if REPO_PATH.match(word) and (ROOT / word).exists() else word
                        for word in documented.argv[1:])]
    if "--config" not in argv and "-c" not in argv:
        env = {**env, "LWD_CONFIG": str(ROOT / "configs" / "tiny.yaml")}
    result = _run(argv, env, tmp_path)
    shown = [line for line in documented.shown_output if line.strip()]
    if shown:  # a transcript: the same output, whatever the exit code
        output = (result.stdout + result.stderr).splitlines()
        for line in shown:
            assert line in output, f"{documented.where}: `{documented.text}` shows {line!r}; got {output[-5:]}"
    else:
        assert result.returncode == 0, (f"{documented.where}: `{documented.text}` exited {result.returncode}: "
                                        f"{result.stderr.strip()[-800:]}")
