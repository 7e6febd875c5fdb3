"""docs/: the CLI reference is current, every example the docs show really runs and prints what they say."""
import contextlib
import importlib.util
import io
import re
import shlex
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import collapsekit as ck
from collapsekit.cli import main

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def block_after(text: str, marker: str, lang: str) -> str:
    """The first ```lang fenced block after `marker` in `text`."""
    rest = text.split(marker, 1)[1]
    return rest.split(f"```{lang}\n", 1)[1].split("```", 1)[0]


def run_python(source: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(source, "<docs example>", "exec"), {"__name__": "__docs__"})  # noqa: S102 - our own docs
    return out.getvalue()


def test_cli_md_is_what_the_generator_writes():
    spec = importlib.util.spec_from_file_location("gen_cli_reference", DOCS / "gen_cli_reference.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    text = gen.render()
    assert (DOCS / "cli.md").read_text() == text, "docs/cli.md is stale: run python docs/gen_cli_reference.py"
    for name in ("train", "report", "prune", "finetune", "validate", "mt-search", "plot"):
        assert f"## collapsekit {name}\n" in text and f"usage: collapsekit {name}" in text


def test_own_model_command_runs_and_prints_the_documented_verdict(monkeypatch, capsys):
    doc = (DOCS / "own-model.md").read_text()
    command = block_after(doc, "<!-- own-model-command", "bash").strip()
    env, program, *args = shlex.split(command)
    assert env == "PYTHONPATH=docs/examples" and program == "collapsekit"
    assert "--model" in args and args[args.index("--model") + 1] == "my_model:factory"
    monkeypatch.syspath_prepend(str(ROOT / env.partition("=")[2]))
    assert main(args) == 0
    printed = capsys.readouterr().out
    shown = doc.split(command, 1)[1].split("```text\n", 1)[1].split("```", 1)[0]
    verdict = next(line for line in shown.splitlines() if line.startswith("verdict:"))
    assert verdict in printed  # the doc shows this command's real output
    assert "bypassable layers: 2 of 5" in printed

    def rows(text):  # layer table rows: (name, bypassable / BOTTLENECK)
        return [(line.split()[0], line.split()[-2]) for line in text.splitlines()
                if line.startswith(("stem.", "branch.", "expand.", "head."))]

    assert rows(printed) == rows(shown) and len(rows(shown)) == 5


def test_own_data_example_runs(monkeypatch):
    monkeypatch.syspath_prepend(str(DOCS / "examples"))
    printed = run_python(block_after((DOCS / "own-model.md").read_text(), "<!-- own-data-example", "python"))
    collapse = float(re.search(r"collapse sparsity ([0-9.]+)", printed).group(1))
    assert 0 < collapse <= 1
    assert "agreement 2/2" in printed
    assert float(re.search(r"dense accuracy ([0-9.]+)", printed).group(1)) > 0.5  # the quadrants are learnable


def test_concepts_example_prints_what_the_page_shows():
    doc = (DOCS / "concepts.md").read_text()
    marker = "<!-- concepts-example"
    source = block_after(doc, marker, "python")
    shown = doc.split(marker, 1)[1].split("```text\n", 1)[1].split("```", 1)[0]
    assert run_python(source) == shown


def _tiny_report():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3), nn.ReLU(), nn.Linear(3, 2))
    with torch.no_grad():
        net[2].weight.mul_(0.01)
    return ck.analyze(net, torch.randn(1, 4), sparsities=[0.5, 0.9])


def test_report_schema_describes_every_key():
    document = _tiny_report().to_dict()
    assert document["first_bottleneck"] is not None
    keys = set(document) | {f"first_bottleneck.{k}" for k in document["first_bottleneck"]}
    keys |= set(document["layers"][0]) | set(document["levels"][0])
    schema = (DOCS / "report-schema.md").read_text()
    described = set(re.findall(r"^\| `([a-z_.]+)` \|", schema, flags=re.M))
    assert keys <= described, f"undocumented keys: {sorted(keys - described)}"
    assert described <= keys, f"documented keys the report does not have: {sorted(described - keys)}"


def test_getting_started_has_the_readme_commands():
    readme = (ROOT / "README.md").read_text()
    commands = [c for c in re.findall(r"```bash\n(.*?)```", readme, flags=re.S) if c.startswith("python3 -m venv")]
    assert len(commands) == 2
    page = (DOCS / "getting-started.md").read_text()
    assert all(c.strip() in page for c in commands)


@pytest.mark.parametrize("page", sorted(p.name for p in DOCS.glob("*.md")))
def test_links_and_figures_exist(page):
    text = (DOCS / page).read_text()
    for target in re.findall(r"\]\(([^)#]+)\)", text):
        if target.startswith("http"):
            continue
        path = (DOCS / target).resolve()
        assert path.exists(), f"{page} links to missing {target}"
        if path.suffix == ".png":
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size < 200_000


# ---- every command line README.md and docs/*.md show runs ---------------------------------------------------
#
# Shown commands are the lines of ```bash blocks (backslash continuations joined), "$ " lines of ```text
# transcripts, and inline `collapsekit ...` code. They run in page order (README.md, getting-started.md, then
# the others) in one scratch folder that sees the repository's files, so `runs/...` written by one command is
# read by the next. Set-up steps (venv, activate, pip install, pytest) are checked for form, not executed.
# `--epochs N` runs as at most EPOCH_CAP epochs and `torchrun --nproc-per-node N` as at most NPROC_CAP processes:
# the command's form is what is tested here, not its accuracy or its speed-up.

EPOCH_CAP = 1
NPROC_CAP = 2
SETUP = ("python3 -m venv", ". ", "source ", "pip install", "python -m pip install", "python -m pytest", "pytest")
TRAINING = {"train", "finetune", "validate", "mt-search"}
OUTPUT_FLAGS = {"--out", "--output", "--dense", "--masks-file"}
SHELL = {"&&", "||", "|", ";", "&", ">", ">>", "2>", "2>&1", "<"}
FENCE = re.compile(r"^( *)```(\w*)[^\n]*\n(.*?)^\1```", re.S | re.M)
ENV = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def doc_pages() -> list[Path]:
    first = [ROOT / "README.md", DOCS / "getting-started.md"]
    return first + sorted(p for p in DOCS.glob("*.md") if p not in first)


def shown_commands(path: Path) -> list[tuple[int, str, str]]:
    """(line, command, kind) for each command line `path` shows, in page order; kind: fenced, transcript, inline."""
    text = path.read_text()
    found, spans = [], []
    for block in FENCE.finditer(text):
        spans.append(block.span())
        lang, indent = block.group(2), len(block.group(1))
        first = text[:block.start(3)].count("\n") + 1
        lines = [line[indent:] for line in block.group(3).splitlines()]
        if lang in ("bash", "sh", "shell", "console"):
            pending, start = "", None
            for i, line in enumerate(lines):
                start = first + i if start is None else start
                if line.rstrip().endswith("\\"):
                    pending += line.rstrip()[:-1] + " "
                    continue
                if re.search(r"(^|[^&])&\s*(#.*)?$", line):  # started in the background: one script up to `wait`
                    pending += re.sub(r"\s*(#.*)?$", "", line) + " "
                    continue
                command = (pending + line).strip()
                if command and not command.startswith("#"):
                    found.append((start, command, "fenced"))
                pending, start = "", None
        elif lang in ("text", ""):
            found += [(first + i, line[2:].strip(), "transcript") for i, line in enumerate(lines)
                      if line.startswith("$ ")]
    for code in re.finditer(r"(?<!`)`([^`\n]+)`(?!`)", text):
        if not any(a <= code.start() < b for a, b in spans) and re.match(r"(\S+=\S+ )*(collapsekit|python|torchrun)( |$)",
                                                                           code.group(1).strip()):
            found.append((text[:code.start()].count("\n") + 1, code.group(1).strip(), "inline"))
    return sorted(found)


def chain(command: str) -> list[list[str]]:
    """The `&&`-joined steps of a command line, each as tokens (comments dropped)."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars="&|;<>")
    lexer.whitespace_split, lexer.commenters = True, "#"
    steps = [[]]
    for token in lexer:
        if token == "&&":
            steps.append([])
        else:
            steps[-1].append(token)
    return [s for s in steps if s]


def is_slow(command: str) -> bool:
    """Trains, reads or writes runs/, or starts other programs: an end-to-end run."""
    words = set(re.findall(r"[\w-]+", command))
    return "runs/" in command or bool(words & TRAINING) or "torchrun" in words or re.search(r"\bpython\S* \S+\.py", command)


def _all_commands():
    seen, params = set(), []
    for page in doc_pages():
        for line, command, kind in shown_commands(page):
            if command in seen:  # README's set-up line, repeated in getting-started.md: run once
                continue
            seen.add(command)
            rel = page.relative_to(ROOT)
            marks = [pytest.mark.slow] if is_slow(command) else []
            params.append(pytest.param(command, kind, id=f"{rel}:{line}", marks=marks))
    return params


COMMANDS = _all_commands()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A scratch folder seeing the repository's files (docs/examples, constraints.txt...) but writing its own runs/."""
    import sys

    ws = tmp_path_factory.mktemp("docs-commands")
    for entry in ROOT.iterdir():
        if not entry.name.startswith(".") and entry.name not in ("runs", "figures", "report.json"):
            (ws / entry.name).symlink_to(entry)
    bin_dir = ws / ".bin"  # `collapsekit` in a shell step: this checkout's, whatever PYTHONPATH the step sets
    bin_dir.mkdir()
    (bin_dir / "collapsekit").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m collapsekit "$@"\n')
    (bin_dir / "collapsekit").chmod(0o755)
    return ws


def cap_epochs(tokens: list[str]) -> list[str]:
    """`tokens` with --epochs at most EPOCH_CAP (unless a schedule's --rounds/--steps need them) and torchrun's
    --nproc-per-node at most NPROC_CAP."""
    caps = {"--nproc-per-node": NPROC_CAP, "--nproc_per_node": NPROC_CAP}
    if "--rounds" not in tokens and "--steps" not in tokens:
        caps["--epochs"] = EPOCH_CAP
    out = list(tokens)
    for i, token in enumerate(out[:-1]):
        if token in caps and out[i + 1].isdigit():
            out[i + 1] = str(min(int(out[i + 1]), caps[token]))
    return out


def check_setup_step(tokens: list[str]) -> None:
    """Set-up steps are checked for form: the files and extras they name exist."""
    text = " ".join(tokens)
    if tokens[0] in (".", "source"):
        assert tokens[1].endswith("/bin/activate"), text
    elif "pip" in tokens:
        args = tokens[tokens.index("install") + 1:]
        for flag, value in zip(args, args[1:]):
            if flag in ("-c", "-r"):
                assert (ROOT / value).is_file(), f"{text}: {value} does not exist"
            if flag == "-e":
                extras = re.fullmatch(r"\.(?:\[([\w,-]+)\])?", value)
                assert extras, f"{text}: installs {value}, not this checkout"
                if extras.group(1):
                    import tomllib

                    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
                    assert set(extras.group(1).split(",")) <= set(declared), f"{text}: unknown extras"
    elif "pytest" in tokens:
        assert importlib.util.find_spec("pytest") is not None


def check_mention(tokens: list[str]) -> bool:
    """An inline `collapsekit SUB --flag` names a real subcommand and its real options; True when it names a model
    too (then it is a command to run, not a mention)."""
    from collapsekit.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    if tokens[0] != "collapsekit" or len(tokens) == 1:
        return False
    assert tokens[1] in commands or tokens[1].startswith("--"), f"no subcommand {tokens[1]!r}"
    if tokens[1] in commands:
        known = commands[tokens[1]]._option_string_actions
        unknown = [t for t in tokens[2:] if t.startswith("--") and t.split("=")[0] not in known]
        assert not unknown, f"collapsekit {tokens[1]} has no option {unknown}"
    return "--model" in tokens or "--checkpoint" in tokens


def written_paths(tokens: list[str]) -> list[str]:
    return [tokens[i + 1] for i, t in enumerate(tokens[:-1]) if t in OUTPUT_FLAGS | {">"}]


def run_step(tokens: list[str], ws: Path, monkeypatch) -> None:
    """One step: in this process when it is `[VAR=value] collapsekit ... [> FILE]`, else in bash."""
    import os
    import subprocess
    import sys

    env = {}
    while tokens and ENV.match(tokens[0]):
        name, _, value = tokens.pop(0).partition("=")
        env[name] = value
    tokens = cap_epochs(tokens)
    redirect = tokens[-2:] if len(tokens) > 2 and tokens[-2] == ">" else None
    argv = tokens[1:len(tokens) - (2 if redirect else 0)]
    if tokens[0] == "collapsekit" and not SHELL & set(argv):
        monkeypatch.chdir(ws)
        for name, value in env.items():
            if name == "PYTHONPATH":
                for part in reversed(value.split(os.pathsep)):
                    monkeypatch.syspath_prepend(str(ws / part))
            monkeypatch.setenv(name, value)
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as exc:  # --help, --version
                code = exc.code or 0
        assert code == 0, f"exit {code}: {err.getvalue()[-2000:]}"
        if redirect:
            (ws / redirect[1]).write_text(out.getvalue())
    else:
        shell_env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
                     "PATH": os.pathsep.join([str(ws / ".bin"), str(Path(sys.executable).parent),
                                              os.environ.get("PATH", "")]), **env}
        text = " ".join(t if t in SHELL else shlex.quote(t) for t in tokens)
        proc = subprocess.run(["bash", "-c", text], cwd=ws, env=shell_env, capture_output=True, text=True,
                              timeout=900)
        said = [line for line in proc.stderr.splitlines() if "error:" in line][:3]  # ours, before any launcher's
        assert proc.returncode == 0, f"{text}: exit {proc.returncode}: {said or proc.stderr[-2000:]}"
    for path in written_paths(tokens):
        assert (ws / path).exists(), f"{' '.join(tokens)} did not write {path}"


@pytest.mark.parametrize("command,kind", COMMANDS)
def test_documented_command_runs(command, kind, workspace, monkeypatch):
    assert not re.search(r"(^|\s)(\.\.\.|<[\w-]+>)(\s|$)", command), f"placeholder in a shown command: {command}"
    for tokens in chain(command):
        if " ".join(tokens).startswith(SETUP) or tokens[0] in (".", "source"):
            check_setup_step(tokens)
        elif kind == "inline" and tokens[0] != "collapsekit" and not ENV.match(tokens[0]):
            scripts = [t for t in tokens[1:] if t.endswith(".py")]
            assert all((ROOT / s).is_file() for s in scripts), f"{command}: no such script"
        elif kind == "inline" and not check_mention(tokens):
            continue  # `collapsekit plot` in a sentence: the subcommand and options exist
        else:
            run_step(list(tokens), workspace, monkeypatch)


def test_shown_commands_are_found_on_every_page(tmp_path):
    # The extraction itself: fenced lines, transcripts, inline commands and mentions, continuations joined.
    by_page = {p.name: shown_commands(p) for p in doc_pages()}
    readme = [c for _, c, _ in by_page["README.md"]]
    assert any(c.startswith("collapsekit report   --model mobilenet_v1") for c in readme)
    assert any(k == "transcript" and "torchrun" in c for _, c, k in by_page["gpu-and-torchrun.md"])
    assert any(k == "inline" and c.startswith("collapsekit prune --checkpoint") for _, c, k in by_page["getting-started.md"])
    torchrun = next(c for _, c, k in by_page["gpu-and-torchrun.md"] if k == "fenced" and c.startswith("torchrun"))
    assert "--out runs/r20-s99" in torchrun  # the backslash continuation joined
    assert chain("A=1 collapsekit x --y 'a b' && pip install -e . # note") == [["A=1", "collapsekit", "x", "--y", "a b"],
                                                                                 ["pip", "install", "-e", "."]]
    assert cap_epochs(["--epochs", "8", "--out", "x"]) == ["--epochs", str(EPOCH_CAP), "--out", "x"]
    assert cap_epochs(["torchrun", "--nproc-per-node", "8", "-m", "collapsekit"])[2] == str(NPROC_CAP)
    page = tmp_path / "page.md"  # a background pair is one script up to its `wait`
    page.write_text("```bash\ncollapsekit a --x 1 &   # first\ncollapsekit b &\nwait\ncollapsekit c\n```\n")
    assert [c for _, c, _ in shown_commands(page)] == ["collapsekit a --x 1 & collapsekit b & wait", "collapsekit c"]
    assert len(COMMANDS) >= 30
