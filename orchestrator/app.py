"""The typer application objects. Command modules in orchestrator/commands/ register on them."""

import typer

app = typer.Typer(
    name="adaray",
    help="Compress a fine-tuned BERT-family teacher into small, fast task-specific students (AdaBERT on Ray).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Inspect a job's data.", no_args_is_help=True)
cache_app = typer.Typer(help="Build, inspect and verify the teacher cache.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(cache_app, name="cache")

@app.callback()
def _root(ctx: typer.Context,
          debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors.")) -> None:
    # ctx.obj: the settings dict orchestrator.cli.main passes in; it reads "debug" when a command fails.
    if isinstance(ctx.obj, dict):
        ctx.obj["debug"] = debug
