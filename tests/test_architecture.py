"""The rule of the house (README, "Architecture"): a stage never imports another stage, shared code
never imports a stage, and no module imports itself back through others."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import grimp
from typer.testing import CliRunner

from stillroom import stages

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def import_cycles(package: str) -> list[list[str]]:
    """Every strongly connected group of two or more modules (Tarjan), from grimp's import graph."""
    graph = grimp.build_graph(package, include_external_packages=False)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in graph.find_modules_directly_imported_by(module):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == module:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    sys.setrecursionlimit(10_000)
    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return cycles


def test_import_linter_contracts_hold():
    done = subprocess.run([str(BIN / "lint-imports")], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def test_no_import_circles():
    assert import_cycles("stillroom") == []


def test_the_cycle_check_finds_a_circle(tmp_path, monkeypatch):
    package = tmp_path / "circled"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from circled import b\n")
    (package / "b.py").write_text("def f():\n    from circled import a\n")
    (package / "c.py").write_text("from circled import a\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert import_cycles("circled") == [["circled.a", "circled.b"]]


def test_dvc_yaml_is_generated_from_the_registry():
    assert (ROOT / "dvc.yaml").read_text() == stages.dvc_yaml(), "run `stillroom stages --write-dvc`"


def test_every_code_dependency_in_the_registry_exists():
    for stage in stages.all_stages():
        for dep in stage.deps:
            if dep.startswith("stillroom/"):
                assert (ROOT / dep).exists(), f"{stage.name} depends on missing {dep}"
        if stage.in_flow or stage.cli:
            assert callable(stage.function())


def test_every_stage_module_is_in_the_independence_contract():
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    independent = next(c for c in contracts if c["type"] == "independence")["modules"]
    for stage in stages.all_stages():
        assert stage.run.split(":")[0] in independent, f"{stage.name} is not in the independence contract"


def test_a_new_stage_is_one_registry_entry(monkeypatch, tmp_path):
    """A dummy stage registered in the list shows up as a CLI command, in the flow and in dvc.yaml."""
    import importlib

    module = tmp_path / "dummy_stage.py"
    module.write_text(
        "from stillroom.data import write_json\n"
        "def run(params, layout):\n"
        "    write_json(layout.stage_metrics('dummy'), {'ran': True})\n"
        "    return {'ran': True}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    dummy = stages.Stage("dummy", "dummy_stage:run", "A stage added in one line.", outs=("data/dummy",))
    monkeypatch.setattr(stages, "STAGES", [*stages.STAGES[:-1], dummy, stages.STAGES[-1]])

    from stillroom import cli

    cli = importlib.reload(cli)  # the CLI builds its commands from the registry
    result = CliRunner().invoke(cli.app, ["dummy", "--root", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    assert '"ran": true' in result.output
    assert (tmp_path / "metrics" / "dummy.json").exists()
    assert [s.name for s in stages.flow_stages()][-2:] == ["dummy", "version"]
    assert "  dummy:\n    cmd: stillroom dummy\n" in stages.dvc_yaml()
    monkeypatch.undo()
    importlib.reload(cli)
