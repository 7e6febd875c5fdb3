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
