"""`stillroom`: the front door. `stillroom run` runs the whole flow; one subcommand per stage.

Exit codes: 0 success, 1 the work failed (the message says why), 2 bad usage, or what a stage's
summary names under `exit_code` (`stillroom ingest`: 3 when any line was quarantined).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markdown import Markdown

from stillroom.config import Params, load_params
from stillroom.data import Layout
from stillroom.stages import Stage, all_stages, dvc_yaml

app = typer.Typer(
    help="Distil the repetitive calls you send to cloud LLMs into small local students.",
    no_args_is_help=True,
    add_completion=False,
)
tasks_app = typer.Typer(help="List the repeated tasks detect found, or show one task card.")
app.add_typer(tasks_app, name="tasks")

console = Console(stderr=True)
# Piped output (CI logs, files) gets room for the whole table instead of rich's 80-column default.
out = Console() if sys.stdout.isatty() else Console(width=200)

RootOpt = Annotated[Path, typer.Option("--root", help="Project root holding params.yaml and data/.")]
ParamsOpt = Annotated[Path, typer.Option("--params", help="Parameters file (relative to the root).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]


def _setup(root: Path, params_file: Path) -> tuple[Params, Layout]:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    layout = Layout(root)
    return load_params(layout.resolve(params_file)), layout


def _local_prefect() -> None:
    """Before a flow runs (on Prefect's temporary local server unless PREFECT_API_URL names one): no analytics,
    and time for that server to start on a busy machine. Prefect waits 20 s; on two cores beside a test run
    it took longer, and `make demo` failed before its first stage."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


def _print(data: object, as_json: bool) -> None:
    if as_json:  # plain print: rich would wrap long lines and break the JSON
        print(json.dumps(data, indent=2, default=str))
    else:
        out.print(data)


def _fails_cleanly(func: Callable) -> Callable:
    """Known failures print one clear line and exit 1 instead of a traceback."""

    @wraps(func)
    def wrapper(*args, **kwargs):
        from pydantic import ValidationError

        from stillroom.teachers import TeacherError

        try:
            return func(*args, **kwargs)
        except typer.Exit:  # an exit status a command chose (click's Exit is a RuntimeError)
            raise
        except (FileNotFoundError, ValueError, TeacherError, ValidationError, RuntimeError) as err:
            console.print(f"[red]error:[/red] {err}")
            raise typer.Exit(1) from err

    return wrapper


def _stage_command(stage: Stage) -> None:
    """`stillroom <stage>`: run one stage on its own, as `dvc repro` or the flow would."""

    @_fails_cleanly
    def command(
        root: RootOpt = Path("."), params_file: ParamsOpt = Path("params.yaml"), as_json: JsonOpt = False
    ) -> None:
        params, layout = _setup(root, params_file)
        summary = stage.function()(params, layout)
        _print(summary, as_json)
        _exit_with(summary)

    command.__doc__ = stage.help
    app.command(stage.command_name)(command)


def _exit_with(summary: object) -> None:
    """A stage's summary may name an exit status for scripts under `exit_code` (0: none)."""
    code = summary.get("exit_code", 0) if isinstance(summary, dict) else 0
    if code:
        raise typer.Exit(int(code))


for _stage in all_stages():
    if _stage.cli:
        _stage_command(_stage)


@app.command("ingest")
@_fails_cleanly
def ingest_command(
    root: RootOpt = Path("."),
    params_file: ParamsOpt = Path("params.yaml"),
    fmt: Annotated[str | None, typer.Option("--format", help="Read every line as this format (default: auto).")] = None,
    since: Annotated[str | None, typer.Option("--since", help="ISO date/time: leave out older calls.")] = None,
    until: Annotated[str | None, typer.Option("--until", help="ISO date/time: leave out calls from then on.")] = None,
    quarantine_ok: Annotated[bool, typer.Option("--quarantine-ok", help="Exit 0 even if lines were quarantined.")] = (
        False
    ),
    as_json: JsonOpt = False,
) -> None:
    """Read LLM call logs into data/records.jsonl; bad lines go to quarantine (exit 3 when any was)."""
    from stillroom.config import IngestParams
    from stillroom.stages import get

    params, layout = _setup(root, params_file)
    overrides = {key: value for key, value in {"format": fmt, "since": since, "until": until}.items() if value}
    params.ingest = IngestParams.model_validate({**params.ingest.model_dump(), **overrides})
    summary = get("ingest").function()(params, layout)
    _print(summary, as_json)
    if not quarantine_ok:
        _exit_with(summary)


@app.command("stages")
@_fails_cleanly
def stages_command(
    root: RootOpt = Path("."),
    write_dvc: Annotated[bool, typer.Option("--write-dvc", help="Regenerate dvc.yaml from the registry.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """List the pipeline stages (the registry in stillroom/stages.py) in the order the flow runs them."""
    if write_dvc:
        (Path(root) / "dvc.yaml").write_text(dvc_yaml())
    rows = [
        {"stage": s.name, "flow": s.in_flow, "dvc": s.in_dvc, "params": list(s.params), "help": s.help}
        for s in all_stages()
    ]
    if as_json:
        _print(rows, True)
        return
    from rich.table import Table

    table = Table(title="stillroom stages (stillroom/stages.py)")
    for column in ("stage", "flow", "dvc", "params", "does"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["stage"], "yes" if row["flow"] else "-", "yes" if row["dvc"] else "-",
                      ", ".join(row["params"]) or "-", row["help"])
    out.print(table)


@app.command("sample-logs")
@_fails_cleanly
def sample_logs(
    root: RootOpt = Path("."),
    params_file: ParamsOpt = Path("params.yaml"),
    out_dir: Annotated[Path | None, typer.Option("--out", help="Folder for the logs (default: ingest.logs).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Build the bundled sample logs from real public data (BBC News, WNUT-16 tweets, chit-chat)."""
    from stillroom.samples import build_sample_logs

    params, layout = _setup(root, params_file)
    target = out_dir or layout.resolve(params.ingest.logs)
    _print(build_sample_logs(params.sample, target), as_json)


@app.command("prepare")
@_fails_cleanly
def prepare(root: RootOpt = Path("."), params_file: ParamsOpt = Path("params.yaml"), as_json: JsonOpt = False) -> None:
    """Prepare the base models once (convert the bundled SmolLM2 GGUF to safetensors, find the encoder,
    distil its static vectors when the classifier may use them)."""
    from stillroom.base_lm import resolve_base_lm
    from stillroom.embeddings import resolve_embedder, static_embedder

    params, _ = _setup(root, params_file)
    classifier = params.train.classifier
    prepared = {
        "student_lm": resolve_base_lm(params.train.lm.base_model),
        "embedder": resolve_embedder(classifier.embedder),
    }
    if "static" in classifier.features:
        prepared["static_embedder"] = str(static_embedder(classifier.embedder, classifier.static_dims))
    _print(prepared, as_json)


@app.command("run")
@_fails_cleanly
def run(
    root: RootOpt = Path("."),
    params_file: ParamsOpt = Path("params.yaml"),
    force: Annotated[bool, typer.Option("--force", help="Re-run stages that dvc.lock shows up to date.")] = False,
    task: Annotated[
        list[str] | None,
        typer.Option("--task", help="Retrain only this task (name or id; repeatable); the others keep their versions."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Run the whole distill flow (Prefect) and print each student's score against the teacher.

    Stages whose code, inputs and params have not changed since the last run are skipped.
    """
    _local_prefect()
    sys.path.insert(0, str(Path(root).resolve()))
    from flows.distill import distill

    rows = distill(root=str(Path(root).resolve()), params_file=str(params_file), force=force, tasks=task or None)
    _report(rows, as_json)


@app.command("watch")
@_fails_cleanly
def watch(
    folder: Annotated[
        Path | None,
        typer.Argument(metavar="FOLDER", help="A folder to act on (e.g. ~/Downloads); without one: the retrain check."),
    ] = None,
    task: Annotated[str | None, typer.Option("--task", help="With FOLDER: the task (name or id) to ask.")] = None,
    apply: Annotated[
        bool, typer.Option("--apply", help="With FOLDER: move files / write JPEGs as the task answers.")
    ] = False,
    undo: Annotated[bool, typer.Option("--undo", help="With FOLDER: take back the last run's changes.")] = False,
    once: Annotated[bool, typer.Option("--once", help="With FOLDER: handle the files there now, then exit.")] = False,
    base_url: Annotated[
        str | None,
        typer.Option("--base-url", help="With FOLDER: a running `stillroom serve` (default: its app in-process)."),
    ] = None,
    root: RootOpt = Path("."),
    params_file: ParamsOpt = Path("params.yaml"),
    as_json: JsonOpt = False,
) -> None:
    """Without FOLDER: retrain only the tasks with enough new records (logs, serve capture) or a demoted student
    (what the `watch` deployment runs every few minutes; with nothing new it ends in seconds).

    With FOLDER and --task: ask the task about each new file, through the server's routing (student when sure,
    else teacher; every exchange captured), and print one line per file. Only suggests unless --apply: a label
    naming a folder moves the file into that sub-folder, a yes from a convert-to-JPEG task writes a JPEG beside
    it. Nothing is ever overwritten; every change is journaled, and --undo reverses the last run's. With --json,
    one JSON object per file and a last one for the run.
    """
    if folder is None:
        if task or apply or undo or once or base_url:
            raise typer.BadParameter("--task, --apply, --undo, --once and --base-url need a FOLDER")
        _local_prefect()
        sys.path.insert(0, str(Path(root).resolve()))
        from flows.watch import watch as watch_flow

        _print(watch_flow(root=str(Path(root).resolve()), params_file=str(params_file)), as_json)
        return
    _watch_folder(folder, task, apply, undo, once, base_url, root, params_file, as_json)


def _watch_folder(
    folder: Path, task: str | None, apply: bool, undo: bool, once: bool, base_url: str | None,
    root: Path, params_file: Path, as_json: bool,
) -> None:
    from stillroom.folder_watch import Outcome, undo_folder, watch_folder

    params, layout = _setup(root, params_file)
    if undo:
        _print(undo_folder(params, layout, folder), as_json)
        return
    if not task:
        raise typer.BadParameter("watching a folder needs --task NAME (`stillroom tasks` lists them)")

    def emit(outcome: Outcome) -> None:
        if as_json:
            print(json.dumps(outcome.public(), ensure_ascii=False), flush=True)
        else:
            out.print(outcome.line(), highlight=False, markup=False)

    if not once:
        console.print(f"watching {folder} for {task} ({'applying' if apply else 'suggesting only'}); Ctrl-C stops")
    try:
        summary = watch_folder(params, layout, folder, task, apply=apply, once=once, base_url=base_url, emit=emit)
    except KeyboardInterrupt:
        return
    if as_json:
        print(json.dumps({"summary": summary}, ensure_ascii=False))
    else:
        actions = ("suggest", "move", "convert", "skip", "error")
        done = ", ".join(f"{key} {summary[key]}" for key in actions if key in summary) or "none"
        routes = ", ".join(f"{route} {count}" for route, count in summary["routes"].items()) or "-"
        console.print(f"{summary['files']} files ({done}); answered by: {routes}; run {summary['run']}")


@app.command("report")
@_fails_cleanly
def report(
    root: RootOpt = Path("."),
    params_file: ParamsOpt = Path("params.yaml"),
    since: Annotated[
        str | None,
        typer.Option("--since", help="Changes since then (24h, 7d, an ISO date): versions, promotions, demotions."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Print the summary of the last run: each task, its student, agreement, latency, size and model URI.

    With --since, the changes instead: new tasks, promotions, challengers and demotions, with each
    new version's agreement against the champion it was compared with.
    """
    from stillroom.report import changes_markdown, changes_since, parse_since, summary_rows

    if since is None:
        _report(summary_rows(Layout(root)), as_json)
        return
    params, layout = _setup(root, params_file)
    moment = parse_since(since)
    events = changes_since(params, layout, moment)
    if as_json:
        _print(events, True)
    else:
        out.print(Markdown(changes_markdown(events, moment)))


def _report(rows: list[dict], as_json: bool) -> None:
    from stillroom.report import render_table

    if as_json:
        _print(rows, True)
    else:
        out.print(render_table(rows))


def _dollars(amount: float) -> str:
    """Cents matter for small tasks: $0.0052, not $0.01."""
    return f"${amount:,.2f}" if amount >= 1 else f"${amount:.4f}"


@tasks_app.callback(invoke_without_command=True)
@_fails_cleanly
def tasks_list(ctx: typer.Context, root: RootOpt = Path("."), as_json: JsonOpt = False) -> None:
    """List the detected tasks: volume, spend, and whether each is worth a student now."""
    if ctx.invoked_subcommand is not None:
        return
    from rich.table import Table

    from stillroom.data import read_cards

    cards = read_cards(Layout(root).cards)
    if as_json:
        long_fields = {"examples", "representative", "edge_cases"}
        _print([card.model_dump(mode="json", exclude=long_fields) for card in cards], True)
        return
    table = Table(title=f"{len(cards)} repeated tasks")
    for column in ("id", "name", "count", "per day", "output", "spend/month", "score", "decision"):
        table.add_column(column, justify="right" if column in ("count", "per day", "spend/month", "score") else "left")
    for card in cards:
        verdict = card.distillability
        table.add_row(
            card.id,
            card.name,
            str(card.count),
            f"{card.calls_per_day:g}",
            card.output_format or card.output_type,
            _dollars(card.monthly_spend_usd),
            f"{verdict.score:.2f}" if verdict else "-",
            verdict.decision if verdict else "-",
        )
    out.print(table)


@tasks_app.command("show")
@_fails_cleanly
def tasks_show(
    task: Annotated[str, typer.Argument(help="Task id or name.")],
    root: RootOpt = Path("."),
    as_json: JsonOpt = False,
) -> None:
    """Show one task card: what it costs, what its answers look like, and why it is or is not worth a student."""
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    from stillroom.data import read_cards

    cards = [c for c in read_cards(Layout(root).cards) if task in (c.id, c.name)]
    if not cards:
        raise ValueError(f"no task {task!r}; `stillroom tasks` lists them")
    card = cards[0]
    if as_json:
        _print(card.model_dump(mode="json"), True)
        return
    verdict = card.distillability
    out.print(f"[bold]{card.name}[/bold]  {card.id}  ({card.detected_by})")
    if verdict:
        out.print(f"decision: [bold]{verdict.decision}[/bold]  score {verdict.score:.2f}")
        for reason in verdict.reasons[1:]:
            out.print(f"  - {escape(reason)}")
    facts = Table.grid(padding=(0, 2))
    prices = ", ".join(f"{m} ${p['input']}/${p['output']} per 1M ({p['price_entry']})" for m, p in card.prices.items())
    consistency = f"{card.self_consistency:.0%} on {card.repeated_inputs} inputs" if card.repeated_inputs else "-"
    seen = " .. ".join(f"{t:%Y-%m-%d %H:%M}" for t in (card.first_seen, card.last_seen) if t)
    main_prompt = " ".join(card.system_prompts[0].split())[:100] if card.system_prompts else ""
    for name, value in (
        ("calls", f"{card.count} ({card.calls_per_day:g} a day), {seen}"),
        ("output", card.output_format or card.output_type),
        ("labels", ", ".join(f"{k} {v}" for k, v in card.label_distribution.items()) or "-"),
        ("json schema", json.dumps(card.json_schema) if card.json_schema else "-"),
        ("tokens per call", f"input p50 {card.input_tokens_p50} / p95 {card.input_tokens_p95}, "
         f"output p50 {card.output_tokens_p50} / p95 {card.output_tokens_p95}"),
        ("spend", f"{_dollars(card.monthly_spend_usd)} a month"),
        ("prices", prices or "-"),
        ("teacher consistency", consistency),
        ("models", ", ".join(f"{m} {n}" for m, n in card.models.items()) or "-"),
        ("system prompts", f"{len(card.system_prompts)}, most used: {main_prompt}" if main_prompt else "-"),
        ("templates", " | ".join(card.templates) or "-"),
    ):
        facts.add_row(name, Text(value))
    out.print(facts)
    for title, examples in (("representative", card.representative), ("edge cases", card.edge_cases)):
        if examples:
            out.print(f"[bold]{title}[/bold]")
            for example in examples:
                why = f" [dim]({escape(example.why)})[/dim]" if example.why else ""
                out.print(f"  {escape(example.input)}\n    -> {escape(example.output)}{why}", highlight=False)


# ------------------------------------------------------------------ serving (stillroom/serve/)


@app.command("serve")
@_fails_cleanly
def serve_command(
    root: RootOpt = Path("."),
    params_file: ParamsOpt = Path("params.yaml"),
    host: Annotated[str | None, typer.Option("--host", help="Bind address (default serve.host: 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option("--port", help="Port (default serve.port: 8787).")] = None,
    log_level: Annotated[str, typer.Option("--log-level", help="uvicorn log level.")] = "info",
) -> None:
    """Serve an OpenAI-compatible /v1/chat/completions: known tasks by their student when it is sure, the rest by
    the teacher (serve.upstream_base_url). Every exchange is captured for the next run."""
    from stillroom.serve import serve

    params, layout = _setup(root, params_file)
    serve(params, layout, host or params.serve.host, port or params.serve.port, log_level)


@app.command("status")
@_fails_cleanly
def status_command(
    root: RootOpt = Path("."), params_file: ParamsOpt = Path("params.yaml"), as_json: JsonOpt = False
) -> None:
    """Per task: the version that may serve (or why none may), live agreement from shadow audits, demotions, traffic."""
    from rich.table import Table

    from stillroom.serve.status import status_report

    params, layout = _setup(root, params_file)
    rows = status_report(params, layout)
    if as_json:
        _print(rows, True)
        return
    table = Table(title="stillroom serve: what may answer locally")
    for column in ("task", "serving", "threshold", "live agreement (95% CI)", "audits", "last 24 h", "note"):
        table.add_column(column)
    for row in rows:
        live = "-"
        if row["live_agreement"] is not None:
            live = f"{row['live_agreement']:.3f} [{row['live_low']:.3f}, {row['live_high']:.3f}]"
        traffic = ", ".join(f"{route} {n}" for route, n in sorted(row["traffic_24h"].items())) or "-"
        serving = f"{row['serving']} ({row['alias']})" if row["serving"] else "teacher only"
        note = "; ".join(row["demoted"]) or row["not_serving_because"] or ""
        threshold = f"{row['threshold']:.4f}" if row["threshold"] is not None else "-"
        table.add_row(row["task"], serving, threshold, live, str(row["live_audits"]), traffic, note)
    out.print(table)


if __name__ == "__main__":
    app()
