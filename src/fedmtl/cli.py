"""The ``fedmtl`` command line: run the demo, run any config, redraw a report, check a config."""

from __future__ import annotations

import json
import logging
import sys
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
import yaml
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fedmtl._version import __version__

CONTEXT = {"help_option_names": ["-h", "--help"]}
app = typer.Typer(
    help="Federated multi-task learning on PyTorch. Start with `fedmtl demo`.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings=CONTEXT,
    suggest_commands=False,  # click suggests a near command name itself ("Did you mean 'demo'?")
)
console = Console(stderr=True, soft_wrap=True)


def error(message: object) -> None:
    """Print ``error: message`` to stderr; the message is text, not markup (``fedmtl[plots]`` stays as written)."""
    console.print(f"[red]error:[/red] {escape(str(message))}")


def _version(value: bool) -> None:
    if value:
        sys.stdout.write(f"fedmtl {__version__} (Python {sys.version.split()[0]})\n")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", "-V", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Federated multi-task learning on PyTorch. Start with `fedmtl demo`."""

SetOption = Annotated[
    Optional[list[str]],
    typer.Option("--set", "-s", help="Override a config value: --set server.rounds=20 (repeatable; values are YAML)."),
]


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("fedmtl").setLevel(logging.INFO)


def _demo_config_path() -> Path:
    return Path(str(resources.files("fedmtl") / "configs" / "demo.yaml"))


def demo_help(demo: dict[str, Any]) -> tuple[str, str]:
    """The demo command's help and its ``--rounds`` help, from the demo's own config (so they cannot drift)."""
    data = demo["data"]
    tasks = data["source"]["tasks"]
    partition = data["partition"]
    skew = (
        f"label-skewed (Dirichlet alpha = {partition['alpha']})" if partition["name"] == "dirichlet" else f"{partition['name']}-partitioned"
    )
    per_client = data.get("task_assignment", {}).get("tasks_per_client")
    holds = f", each holding {per_client} of them" if per_client else ""
    rounds = demo["server"]["rounds"]
    text = (
        f"The built-in experiment: {data['num_clients']} {data['source']['name'].upper().replace('MNIST1D', 'MNIST-1D')} "
        f"clients with {skew} data, {len(tasks)} tasks ({', '.join(tasks)}){holds}, {rounds} rounds."
    )
    return text, f"Number of rounds (default: the demo's {rounds})."


DEMO_HELP, DEMO_ROUNDS_HELP = demo_help(yaml.safe_load(_demo_config_path().read_text()))


def _number(v: object) -> str:
    return f"{v:.4f}" if isinstance(v, (int, float)) else "n/a"  # None: not finite


def _print_summary(results) -> None:  # type: ignore[no-untyped-def]
    import torch.distributed as dist

    from fedmtl.report.labels import metric_name, personalized_tasks, primary_metric

    if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
        return  # under torchrun, rank 0 speaks for the run
    table = Table(title=f"fedmtl · {results.run_dir}")
    table.add_column("what")
    table.add_column("value", justify="right")
    s = results.summary
    if s.get("global_model"):
        table.add_row("global model", str(s["global_model"]).split(":")[0])  # "not trained" (summary.json says why)
    for task, m in s.get("final_global", {}).items():
        for k, v in m.items():
            table.add_row(f"global {task} {metric_name(k)}", _number(v))
    for task, block in personalized_tasks(s.get("final_personalized")).items():
        for k, v in block["pooled"].items():
            table.add_row(f"personalised {task} {metric_name(k)}, pooled over {block['clients']} clients", _number(v))
        key = primary_metric(block["pooled"])
        for which, label in (("median", "median client"), ("worst10", "mean of the worst 10 % of clients")):
            if key in block.get(which, {}):
                table.add_row(f"personalised {task} {metric_name(key)}, {label}", _number(block[which][key]))
    table.add_row("uplink MB", f"{s['bytes_up_total'] / 1e6:.1f}")
    table.add_row("downlink MB", f"{s['bytes_down_total'] / 1e6:.1f}")
    table.add_row("engine", s["engine"])
    for reason in s.get("engine_fallback") or []:
        table.add_row("sequential fallback", reason)
    table.add_row("wall seconds", f"{s['wall_seconds']:.1f}")
    Console().print(table)
    Console().print(f"report: {results.run_dir / 'report.html'}")


def _run(config: Optional[Path], overrides: list[str], resume: Optional[Path], quiet: bool) -> None:
    from fedmtl._extras import MissingExtraError
    from fedmtl.config import ConfigError, load_config
    from fedmtl.data import DataError
    from fedmtl.experiment import CheckpointError, Experiment

    try:
        if resume is not None and config is None:
            saved = resume / "config.yaml"
            if not saved.exists():
                raise ConfigError(f"{str(resume)!r} has no config.yaml; pass the CONFIG used for that run")
            config = saved
        cfg = load_config(config, overrides)
        results = Experiment(cfg).run(resume=resume, progress=not quiet)
    except (ConfigError, DataError, CheckpointError, MissingExtraError) as exc:
        error(exc)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/yellow]: the last checkpoint is intact; continue with --resume RUN_DIR")
        raise typer.Exit(130) from None
    _print_summary(results)


@app.command(help=DEMO_HELP)
def demo(
    rounds: Annotated[Optional[int], typer.Option(help=DEMO_ROUNDS_HELP)] = None,
    out: Annotated[Path, typer.Option(help="Folder for run folders.")] = Path("runs"),
    set_: SetOption = None,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
) -> None:
    _setup_logging(False)
    overrides = [f"output.dir={out}", *(set_ or [])]
    if rounds is not None:
        overrides.append(f"server.rounds={rounds}")
    from datetime import datetime

    overrides.append(f"output.name=demo-{datetime.now():%Y%m%d-%H%M%S}")
    _run(_demo_config_path(), overrides, None, quiet)


@app.command()
def run(
    config: Annotated[
        Optional[Path],
        typer.Argument(help="Experiment YAML (omit: the defaults plus --set, or with --resume the run's own)."),
    ] = None,
    set_: SetOption = None,
    resume: Annotated[Optional[Path], typer.Option(help="Continue this run folder from its last checkpoint.")] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log each step.")] = False,
) -> None:
    """Run an experiment from a YAML config and/or --set overrides, or resume one."""
    _setup_logging(verbose)
    if config is None and resume is None and not set_:
        error("give a CONFIG file, --set key=value overrides of the defaults, or --resume RUN_DIR")
        raise typer.Exit(2)
    _run(config, set_ or [], resume, quiet)


@app.command()
def report(run_dir: Annotated[Path, typer.Argument(help="A run folder.")]) -> None:
    """Redraw a run's plots and write its self-contained report.html."""
    from fedmtl.experiment import render_report

    try:
        path = render_report(run_dir)
    except FileNotFoundError as exc:
        error(exc)
        raise typer.Exit(2) from None
    Console().print(f"wrote {path}")


@app.command()
def compare(
    run_dirs: Annotated[list[Path], typer.Argument(help="Run folders to compare (two or more, in the order to show).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for compare.html and the PNGs.")] = Path("compare"),
) -> None:
    """Compare runs: per-task score and loss by round and by bytes sent, side by side, with a summary table."""
    from fedmtl._extras import MissingExtraError
    from fedmtl.report.compare import compare_runs

    try:
        path = compare_runs(run_dirs, out)
    except (FileNotFoundError, MissingExtraError) as exc:
        error(exc)
        raise typer.Exit(2) from None
    Console().print(f"wrote {path}")


@app.command()
def config(
    config: Annotated[Optional[Path], typer.Argument(help="YAML to validate (default: the built-in defaults).")] = None,
    set_: SetOption = None,
    demo_: Annotated[bool, typer.Option("--demo", help="Show the demo's configuration.")] = False,
) -> None:
    """Validate a configuration and print it fully resolved (every default written out)."""
    from fedmtl.config import ConfigError, dump_config, load_config

    try:
        cfg = load_config(_demo_config_path() if demo_ else config, set_ or [])
    except ConfigError as exc:
        error(exc)
        raise typer.Exit(2) from None
    sys.stdout.write(dump_config(cfg))


@app.command()
def schema() -> None:
    """Print the JSON schema of the configuration (every field, type, bound and default)."""
    from fedmtl.config import ExperimentConfig

    sys.stdout.write(json.dumps(ExperimentConfig.model_json_schema(), indent=2) + "\n")


@app.command("list")
def list_components(
    kind: Annotated[Optional[str], typer.Argument(help="One kind (model, trunk, balancer, scheme, algorithm, aggregator, server_optimizer, codec); default all.")] = None,
) -> None:
    """List every registered component (built-in and plugin): its name, one line on what it is, and its options."""
    from fedmtl import registry

    if kind is not None and kind not in registry.KINDS:
        error(f"unknown kind {kind!r}; allowed: {', '.join(registry.KINDS)}")
        raise typer.Exit(2)
    try:
        found = registry.components(kind)
    except registry.PluginError as exc:
        error(exc)
        raise typer.Exit(2) from None
    for k in [kind] if kind else list(registry.KINDS):
        spec = registry.KINDS[k]
        sys.stdout.write(f"{k} ({spec.section}): {spec.summary}\n")
        members = [c for c in found if c.kind == k]
        width = max((len(c.name) for c in members), default=0) + 2
        for c in members:
            origin = "" if c.origin.startswith("fedmtl.") else f" [{c.origin}]"
            sys.stdout.write(f"  {c.name:<{width}}{c.description}{origin}\n")
            opts = ", ".join(f"{key}: {value}" for key, value in c.options().items())
            if opts:
                sys.stdout.write(f"  {'':<{width}}options: {opts}\n")
        sys.stdout.write("\n")


# -- fedmtl flower ...: deployment on Flower's runtime (needs the flower extra) ---------------------
flower_app = typer.Typer(
    help="Deploy on Flower's runtime: a new app, certificates, a local federation of real processes.",
    no_args_is_help=True,
    context_settings=CONTEXT,
    suggest_commands=False,
)
app.add_typer(flower_app, name="flower")


def _flower():  # type: ignore[no-untyped-def]
    try:
        from fedmtl.integrations.flower import launch
    except ImportError as exc:
        error(exc)
        raise typer.Exit(2) from None
    return launch


def write_flower_app(folder: Path) -> Path:
    """Write the ready Flower app (pyproject.toml, fedmtl_app.py, experiment.yaml) into ``folder``."""
    template = resources.files("fedmtl") / "configs" / "flower_app"
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("pyproject.toml", "fedmtl_app.py", "experiment.yaml"):
        (folder / name).write_text((template / name).read_text())
    return folder


@flower_app.command("new")
def flower_new(
    folder: Annotated[Path, typer.Argument(help="The app folder to create.")],
    force: Annotated[bool, typer.Option("--force", help="Overwrite the app's files if the folder holds them.")] = False,
) -> None:
    """Write a ready Flower app (pyproject.toml, fedmtl_app.py, experiment.yaml) to run with `flwr run` or `fedmtl flower local`."""
    clash = [n for n in ("pyproject.toml", "fedmtl_app.py", "experiment.yaml") if (folder / n).exists()]
    if clash and not force:
        error(f"{str(folder)!r} already holds {', '.join(clash)}; choose another folder or pass --force")
        raise typer.Exit(2)
    write_flower_app(folder)
    console.print(f"wrote a Flower app to {folder}: edit experiment.yaml, then `fedmtl flower local --app {folder}`")


@flower_app.command("certs")
def flower_certs(
    folder: Annotated[Path, typer.Argument(help="Where to write ca.crt, server.pem, server.key.")],
    host: Annotated[Optional[list[str]], typer.Option("--host", help="Name or IP the SuperLink is reached at (repeatable).")] = None,
) -> None:
    """Generate a CA and a SuperLink certificate (for tests and trials; use your own CA in production)."""
    certs = _flower().generate_certificates(folder, tuple(host or ["127.0.0.1", "localhost"]))
    console.print(f"CA: {certs.ca}\ncertificate: {certs.cert}\nkey: {certs.key}")


@flower_app.command("local")
def flower_local(
    app_dir: Annotated[
        Optional[Path],
        typer.Option("--app", help="The Flower app folder (`fedmtl flower new DIR`; default: a new one in WORKDIR/app)."),
    ] = None,
    nodes: Annotated[int, typer.Option("--nodes", help="SuperNodes to start.")] = 3,
    tls: Annotated[bool, typer.Option("--tls/--insecure", help="TLS with generated certificates.")] = True,
    workdir: Annotated[Path, typer.Option("--workdir", help="Logs, certificates, Flower home, run folder.")] = Path("flower-local"),
    run_config: Annotated[Optional[list[str]], typer.Option("--run-config", "-c", help="key=value for the app's run config (repeatable).")] = None,
    warm: Annotated[bool, typer.Option("--warm/--fresh", help="One warm ClientApp process per SuperNode, or Flower's default: a fresh process per message.")] = True,
    idle_poll: Annotated[Optional[float], typer.Option("--idle-poll", help="Cap the SuperNodes' idle wait (Flower's is 3 s) at this many seconds.", min=0.01)] = None,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds without any log or metric written before everything is stopped (stretched on a loaded machine); every process is also killed after 2x this.")] = 900.0,
) -> None:
    """Start a SuperLink and N SuperNodes on 127.0.0.1, run the app with `flwr run`, wait, stop them all."""
    launch = _flower()
    workdir = workdir.resolve()
    if app_dir is None:
        app_dir = write_flower_app(workdir / "app")
    overrides: dict[str, object] = {"output-dir": str(workdir / "runs"), "min-nodes": nodes}
    for item in run_config or []:
        key, _, value = item.partition("=")
        overrides[key] = yaml_value(value)
    run_dir = workdir / "runs" / str(overrides.get("run-name", "flower"))
    with launch.LocalFederation(workdir, num_nodes=nodes, tls=tls, time_limit=2 * timeout + 60, warm=warm, idle_poll=idle_poll) as fed:
        run_id = fed.submit(app_dir.resolve(), overrides)
        console.print(f"run {run_id} on {fed.address} ({'TLS' if tls else 'insecure'}), {nodes} SuperNodes; logs in {workdir}")
        # no fixed clock: the run fails when its processes have written nothing for `timeout` seconds
        if not launch.wait_until((run_dir / "summary.json").exists, timeout, workdir, poll=1.0):
            console.print(fed.run_log(run_id)[-4000:])
            raise typer.Exit(1)
    sys.stdout.write((run_dir / "summary.json").read_text() + "\n")


def yaml_value(text: str) -> object:
    return yaml.safe_load(text)


if __name__ == "__main__":  # pragma: no cover
    app()
