"""The README and docs/ as a contract: every command they show names things that exist, and configures.

Each `mlflow run .` and `python steps/<step>.py` command in a fenced bash
block is checked the way the step itself checks it before any run exists
(`trainflow.cli.precheck_overrides`: Hydra composes the step's config with
the command's overrides, `_target_`s are read against their signatures), so
a renamed key, config group, experiment or entry point fails here. What
cannot run here in seconds (training, servers, clusters) is checked for
names only: entry points in MLproject, declared parameters, `python -m`
modules, and every repository path the text names (`tests/...`, `configs/...`).
Placeholders (`<run_id>`, `$VAR`) stand for any value of the right kind.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from helpers import ROOT
from trainflow.cli import force_step_overrides, precheck_overrides
from trainflow.config.param_names import override_from_param
from trainflow.pipeline.main import STEPS

DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>\w*)[^\n]*\n(?P<body>.*?)^(?P=indent)```", re.M | re.S)
# repository folders whose paths the text must not misname (data/, k8s/ ... are the user's own)
REPO_FOLDERS = ("src/", "steps/", "configs/", "tests/", "docs/", "bench/", ".ci/")
REPO_PATH = re.compile(r"(?<![\w./:$-])((?:src|steps|configs|tests|docs|bench|\.ci)/[\w./-]*\w)")
FAKE_RUN_ID = "0123456789abcdef0123456789abcdef"
ENTRY_POINTS = yaml.safe_load((ROOT / "MLproject").read_text())["entry_points"]


@dataclass(frozen=True)
class Command:
    where: str  # file:line, for the failure message
    argv: tuple[str, ...]
    pythonpath: tuple[str, ...] = ()  # what an earlier `export PYTHONPATH=...` of its block put there


def _blocks(lang: str) -> list[tuple[Path, int, str]]:
    found = []
    for path in DOCUMENTS:
        text = path.read_text()
        for match in FENCE.finditer(text):
            if match.group("lang") == lang:
                line = text.count("\n", 0, match.start("body")) + 1
                found.append((path, line, match.group("body")))
    return found


def _with_placeholders(text: str) -> str:
    text = re.sub(r"<(run_id|id|best trial)>", FAKE_RUN_ID, text)
    text = text.replace("$PWD", str(ROOT))
    return re.sub(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?", "1", text)


def _commands() -> list[Command]:
    commands = []
    for path, first, body in _blocks("bash"):
        pythonpath: tuple[str, ...] = ()
        logical: list[tuple[int, str]] = []
        for offset, raw in enumerate(body.splitlines()):
            line = raw.strip()
            if logical and logical[-1][1].endswith("\\"):
                logical[-1] = (logical[-1][0], logical[-1][1][:-1] + " " + line)
            else:
                logical.append((first + offset, line))
        for number, line in logical:
            if not line or line.startswith("#"):
                continue
            try:
                argv = shlex.split(_with_placeholders(line), comments=True)
            except ValueError:  # not shell (a JSON config shown in a bash block)
                continue
            if argv[:1] == ["export"] and argv[1:2] and argv[1].startswith("PYTHONPATH="):
                pythonpath = tuple(p for p in argv[1].split("=", 1)[1].split(":") if p)
            while argv and (re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", argv[0]) or argv[0] == "export"):
                argv = argv[1:]  # `VAR=value cmd` and `export VAR=value`
            if argv:
                commands.append(Command(f"{path.relative_to(ROOT)}:{number}", tuple(argv), pythonpath))
    return commands


COMMANDS = _commands()


def _mlflow_runs() -> list[Command]:
    return [c for c in COMMANDS if "mlflow" in c.argv and c.argv[c.argv.index("mlflow") + 1:][:1] == ("run",)]


def _step_scripts() -> list[Command]:
    return [c for c in COMMANDS if any(re.fullmatch(r"steps/\w+\.py", a) for a in c.argv)]


def _run_options(argv: tuple[str, ...]) -> tuple[str | None, str, list[str]]:
    """(project URI, entry point, -P values) of an `mlflow run` command."""
    rest = list(argv[argv.index("mlflow") + 2:])
    uri, entry, params = None, "main", []
    while rest:
        arg = rest.pop(0)
        if arg in ("-e", "--entry-point"):
            entry = rest.pop(0)
        elif arg in ("-P", "--param-list"):
            params.append(rest.pop(0))
        elif arg.startswith("-"):
            if rest and not rest[0].startswith("-"):
                rest.pop(0)  # the option's value (--env-manager local, --backend kubernetes, ...)
        elif uri is None:
            uri = arg
    return uri, entry, params


def _check(command: Command, config_name: str, overrides: list[str], capsys: pytest.CaptureFixture[str],
           monkeypatch: pytest.MonkeyPatch) -> None:
    for folder in command.pythonpath:
        monkeypatch.syspath_prepend(folder)
    where = command.where
    try:
        precheck_overrides(config_name, overrides)
    except SystemExit:
        pytest.fail(f"{where}: {capsys.readouterr().err.strip()}")


def test_the_documents_show_commands_of_every_kind() -> None:
    """The parser finds what the checks below check: a parser that found nothing would pass them all."""
    assert len(_mlflow_runs()) >= 10 and len(_step_scripts()) >= 10


@pytest.mark.parametrize("command", _mlflow_runs(), ids=lambda c: c.where)
def test_an_mlflow_run_command_names_an_entry_point_and_params_it_takes(command: Command, capsys, monkeypatch) -> None:
    uri, entry, params = _run_options(command.argv)
    assert entry in ENTRY_POINTS, f"{command.where}: no entry point '{entry}' in MLproject"
    if uri != ".":
        return  # another project (a Git URL): its own MLproject
    declared = ENTRY_POINTS[entry].get("parameters")
    if declared:
        names = [p.split("=", 1)[0] for p in params]
        assert set(names) <= set(declared), f"{command.where}: {entry} declares only {sorted(declared)}"
        return
    assert all(not p.startswith("+") for p in params), f"{command.where}: MLflow refuses -P names starting with +"
    overrides = [override_from_param(p) for p in params]
    if entry == "main":
        overrides = force_step_overrides(overrides, STEPS)
    _check(command, entry, overrides, capsys, monkeypatch)


@pytest.mark.parametrize("command", _step_scripts(), ids=lambda c: c.where)
def test_a_step_script_command_configures(command: Command, capsys, monkeypatch) -> None:
    index = next(i for i, a in enumerate(command.argv) if re.fullmatch(r"steps/\w+\.py", a))
    script = ROOT / command.argv[index]
    assert script.is_file(), f"{command.where}: no {command.argv[index]}"
    config = re.search(r'config_name="(\w+)"', script.read_text())
    if config is None:
        return  # reproduce: its own two arguments, no Hydra config
    overrides = [a for a in command.argv[index + 1:] if a != "..."]
    prefixes = STEPS if config.group(1) == "main" else ()
    _check(command, config.group(1), force_step_overrides(overrides, prefixes) if prefixes else overrides,
           capsys, monkeypatch)


def test_python_m_names_a_module_that_exists() -> None:
    for command in COMMANDS:
        argv = list(command.argv)
        if "-m" in argv and "python" in argv and argv.index("-m") == argv.index("python") + 1:
            module = argv[argv.index("-m") + 1]
            assert importlib.util.find_spec(module) is not None, f"{command.where}: no module {module}"


def _listing_lines(text: str) -> set[int]:
    """Line numbers inside unlabelled fences: folder listings, whose paths are relative to the folder shown."""
    lines: set[int] = set()
    for match in FENCE.finditer(text):
        if not match.group("lang"):
            start = text.count("\n", 0, match.start()) + 1
            lines.update(range(start, start + match.group(0).count("\n") + 1))
    return lines


def test_every_repository_path_the_documents_name_exists() -> None:
    missing = []
    for path in DOCUMENTS:
        text = path.read_text()
        listings = _listing_lines(text)
        for number, line in enumerate(text.splitlines(), 1):
            if number in listings:
                continue
            for name in REPO_PATH.findall(_with_placeholders(line)):
                if name.startswith("configs/local/") or "*" in name:
                    continue  # configs/local is each machine's own, untracked
                if f"{name}*" in line and any(ROOT.glob(f"{name}*")):
                    continue  # a glob (`tests/test_slurm_*.py`) that matches files
                if not (ROOT / name).exists() and not (ROOT / name.rstrip(".")).exists():
                    missing.append(f"{path.relative_to(ROOT)}:{number}: {name}")
    assert not missing, "\n".join(missing)


def test_the_bad_input_corpus_size_is_the_one_quoted() -> None:
    from test_bad_input import CASES

    quoted = re.search(r"corpus of (\d+) cases", (ROOT / "README.md").read_text())
    assert quoted and int(quoted.group(1)) == len(CASES), (quoted and quoted.group(0), len(CASES))


def test_readme_and_scaling_doc_quote_the_same_requests_per_train_run() -> None:
    readme = re.search(r"tracking requests per train run[^|]*\|\s*(\d+) fixed \+ (\d+) per epoch",
                       (ROOT / "README.md").read_text())
    scaling = re.search(r"a train run makes \*\*(\d+) requests \+ (\d+) per\s+epoch",
                        (ROOT / "docs" / "scaling.md").read_text())
    assert readme and scaling and readme.groups() == scaling.groups(), (readme, scaling)


def test_the_python_blocks_parse_and_define_every_name_they_use() -> None:
    """A snippet runs as shown: every name it reads is a builtin, or defined in it or an earlier snippet
    of the same document (read top to bottom)."""
    import ast
    import builtins
    import textwrap

    undefined = []
    defined_by_document: dict[Path, set[str]] = {}
    for path, line, body in _blocks("python"):
        tree = ast.parse(textwrap.dedent(body), f"{path.name}:{line}")
        known = defined_by_document.setdefault(path, set(dir(builtins)))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                known.update((a.asname or a.name).split(".")[0] for a in node.names)
            elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                known.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                known.add(node.id)
            elif isinstance(node, ast.arg):
                known.add(node.arg)
        for node in ast.walk(tree):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id not in known:
                undefined.append(f"{path.relative_to(ROOT)}:{line + node.lineno - 1}: {node.id}")
    assert not undefined, "\n".join(undefined)


def _quoted_typo_messages() -> list[tuple[str, str]]:
    """The README's table of what each typo prints: (override, the line it quotes)."""
    text = (ROOT / "README.md").read_text()
    start = text.index("What each typo prints")
    block = FENCE.search(text, start)
    assert block is not None
    return [tuple(line.split(None, 1)) for line in block.group("body").splitlines() if line.strip()]  # type: ignore[misc]


@pytest.mark.parametrize(("override", "quoted"), _quoted_typo_messages())
def test_a_quoted_typo_message_is_what_the_step_prints(override: str, quoted: str, capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        precheck_overrides("train", ["experiment=example", override])
    printed = capsys.readouterr().err.strip()
    assert exited.value.code == 2
    assert printed.startswith(quoted.removesuffix("...)").removesuffix("...")), printed


@pytest.mark.slow
def test_the_settings_the_readme_names_bound_an_unreachable_server_under_mlflow_run(tmp_path) -> None:
    """MLflow's CLI creates the run before trainflow runs; with the README's two settings it gives up
    after one attempt and names the URI. A wait bounded by anything else shows as TimeoutExpired."""
    import subprocess

    from helpers import step_env
    from servers import VENV_BIN, free_port

    uri = f"http://127.0.0.1:{free_port()}"
    env = step_env(uri, MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="5")
    done = subprocess.run([f"{VENV_BIN}/mlflow", "run", str(ROOT), "-e", "train", "-P", "experiment=example",
                           "--env-manager", "local"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert f"API request to {uri}/api/2.0/mlflow/runs/create failed" in last, last
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES=0 MLFLOW_HTTP_REQUEST_TIMEOUT=5" in readme
