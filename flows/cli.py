"""`lwd`: the command line over every flywheel stage.

Each stage command loads the config once and runs the same Prefect flow that deployments schedule,
with the config as its parameter, so a run started here shows up in the Prefect UI like any other.
Flows are imported inside their command: `lwd --help` stays fast.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import BaseModel

from flows.service_defaults import apply_service_defaults, log_api_retries
from lwd_core.config import CONFIG_FILE_ENV, LWDConfig, load_config

app = typer.Typer(
    name="lwd",
    help=(
        "LWD Flywheel: learning while deploying.\n\n"
        "Stages of one round: ingest -> label-rewards -> snapshot -> train -> evaluate -> promote "
        "(reviewer: approve) -> rollout. `lwd flywheel` chains them for K rounds."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
fleet_app = typer.Typer(help="Simulated robot fleet: start actors, show versions per robot.", no_args_is_help=True)
app.add_typer(fleet_app, name="fleet")
keys_app = typer.Typer(help="Ed25519 keys: one per robot, and the release key.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
import_app = typer.Typer(help="Bring data in: a LeRobotDataset v3 as offline data.", no_args_is_help=True)
app.add_typer(import_app, name="import")
export_app = typer.Typer(help="Hand data out: a snapshot as a LeRobotDataset v3.", no_args_is_help=True)
app.add_typer(export_app, name="export")

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help=f"YAML config file (default: ${CONFIG_FILE_ENV} or ./lwd.yaml)."),
]


def _load(config_file: Path | None) -> LWDConfig:
    """The one place the CLI reads settings: the file named here, else $LWD_CONFIG or ./lwd.yaml.
    A bad setting or file is one readable line on stderr and exit code 2, not a traceback."""
    from pydantic import ValidationError

    try:
        return load_config(config_file)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(part) for part in error['loc']) or 'config'}: {error['msg']}"
                             for error in exc.errors())
        message = f"config error: {problems}"
    except (OSError, ValueError) as exc:  # a missing file, unreadable YAML
        message = f"config error: {type(exc).__name__}: {exc}".splitlines()[0]
    typer.secho(message, fg="red", err=True)
    raise typer.Exit(code=2)


def _version(show: bool) -> None:
    if show:
        from importlib.metadata import version

        typer.echo(f"lwd-flywheel {version('lwd-flywheel')}")
        raise typer.Exit()


@app.callback()
def _options(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                   help="Print the version and exit.")] = False) -> None:
    """LWD Flywheel: learning while deploying."""


def _run(config: LWDConfig, stage: Callable[..., Any], **params: Any) -> Any:
    """Run a stage with the loaded config as its parameter; the config's Prefect API (if any) is used
    unless PREFECT_API_URL is set explicitly."""
    import httpx
    from prefect.exceptions import PrefectHTTPStatusError
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tasks.events import flush_events

    log_api_retries()
    updates: dict[Any, Any] = {}
    if PREFECT_API_URL.value():
        pass  # an explicit API: nothing to add
    elif config.orchestration.prefect_api_url:
        updates[PREFECT_API_URL] = config.orchestration.prefect_api_url
    with temporary_settings(updates=updates):
        try:
            result = stage(config=config, **params)
        except (PrefectHTTPStatusError, httpx.TransportError) as exc:
            if isinstance(exc, PrefectHTTPStatusError) and exc.response.status_code < 500:
                raise  # refused (auth, a version mismatch), not down: its own message says why
            typer.echo(f"error: the Prefect API at {PREFECT_API_URL.value() or 'the embedded server'} failed past "
                       f"its retries ({str(exc).splitlines()[0][:200]}): the Prefect server, or its database or "
                       "Redis, is down. Check the server's log, then run the same command again: finished "
                       "episodes and registered versions are kept and the round resumes.", err=True)
            raise typer.Exit(1) from exc
        finally:
            flush_events()  # review and rollout events reach the server before this process exits
    if isinstance(result, BaseModel):
        typer.echo(result.model_dump_json(indent=2))
    elif result is not None:
        typer.echo(json.dumps(result, indent=2, default=str) if isinstance(result, dict | list) else str(result))
    return result


@app.command("config")
def show_config(config: ConfigOption = None) -> None:
    """Print the effective configuration (secrets masked)."""
    typer.echo(json.dumps(_load(config).public_dict(), indent=2))


@app.command()
def generate_offline(
    config: ConfigOption = None,
    total_steps: Annotated[int, typer.Option(help="Robot steps in all (default: dataset.total_steps).")] = 0,
    seed: Annotated[int, typer.Option(help="Base seed (default: dataset.seed).")] = -1,
) -> None:
    """Generate the offline dataset in the simulator (demos, failed rollouts, play; paper mix)."""
    from flows.generate_offline import generate_offline

    _run(_load(config), generate_offline, total_steps=total_steps, seed=seed)


@app.command()
def ingest(config: ConfigOption = None, limit: int = 0) -> None:
    """Validate uploaded episodes, quarantine bad ones, append good ones to the online buffer."""
    from flows.ingest import ingest

    _run(_load(config), ingest, limit=limit)


@app.command()
def label_rewards(config: ConfigOption = None) -> None:
    """Label sparse success rewards, interventions and return bookkeeping on new buffer data."""
    from flows.label_rewards import label_rewards

    _run(_load(config), label_rewards)


@app.command()
def snapshot(config: ConfigOption = None) -> None:
    """Write an immutable manifest of the offline + online buffer for a training run to name."""
    from flows.snapshot_buffer import snapshot_buffer

    _run(_load(config), snapshot_buffer)


@app.command()
def train(
    config: ConfigOption = None,
    snapshot_id: str = "",
    steps: int = 0,
    method: Annotated[str, typer.Option(help="Learning method (an agent: lwd, bc, hgdagger, recap).")] = "lwd",
    resume: Annotated[bool, typer.Option(help="Continue from the last checkpoint (--no-resume: from scratch).")] = True,
) -> None:
    """Train DIVL + QAM (or another method) on a snapshot (latest if omitted), from the last checkpoint."""
    from flows.train import train

    _run(_load(config), train, snapshot_id=snapshot_id, steps=steps, method=method, resume=resume)


@app.command()
def evaluate(config: ConfigOption = None, model_version: str = "", episodes_per_task: int = 0) -> None:
    """Evaluation gate: candidate vs champion on the sim suite."""
    from flows.evaluate_gate import evaluate_gate

    _run(_load(config), evaluate_gate, model_version=model_version, episodes_per_task=episodes_per_task)


@app.command()
def promote(
    config: ConfigOption = None,
    model_version: str = "",
    wait: Annotated[float, typer.Option(help="Seconds to wait for a reviewer (default: the config's).")] = -1.0,
) -> None:
    """Give a passing candidate the `challenger` alias and wait for a reviewer."""
    from flows.promote import promote

    _run(_load(config), promote, model_version=model_version, wait_seconds=wait)


@app.command()
def approve(
    model_version: str,
    config: ConfigOption = None,
    reviewer: str = "cli",
    comment: Annotated[str, typer.Option(help="Why (stored on the model version).")] = "",
) -> None:
    """Reviewer approval: alias `champion` moves to MODEL_VERSION and the approval is recorded; a review
    run waiting for it is answered and rolls it out."""
    from flows.promote import approve

    _run(_load(config), approve, model_version=model_version, reviewer=reviewer, comment=comment)


@app.command()
def reject(
    model_version: str,
    reason: Annotated[str, typer.Option(help="Why (stored on the model version).")],
    config: ConfigOption = None,
    reviewer: str = "cli",
) -> None:
    """Reviewer rejection: MODEL_VERSION leaves `challenger`; reviewer and reason become version tags."""
    from flows.promote import reject

    _run(_load(config), reject, model_version=model_version, reason=reason, reviewer=reviewer)


@app.command("watch-champion")
def watch_champion(config: ConfigOption = None) -> None:
    """Ship a champion a reviewer set in the MLflow UI (what the scheduled deployment runs), or refuse it
    when its gate did not pass."""
    from flows.promote import watch_champion

    _run(_load(config), watch_champion)


@app.command()
def status(config: ConfigOption = None) -> None:
    """Where things stand: champion and challenger, the fleet's desired and running versions, the
    upload backlog, and the latest snapshot and checkpoint."""
    from lwd_core.data.ingest import pending_raw
    from lwd_core.data.layout import CHECKPOINT_LATEST_KEY, SNAPSHOT_LATEST_KEY
    from lwd_core.fleet.coordinator import Coordinator
    from lwd_core.store import open_store
    from tasks.promotion import registry_aliases

    settings = _load(config)
    store = open_store(settings)
    coordinator = Coordinator(store)
    desired = coordinator.desired()
    typer.echo(json.dumps({
        **registry_aliases.fn(settings),  # a read, outside any flow run: no task run for it
        "fleet": {"revision": desired["revision"], "stable": (desired.get("stable") or {}).get("version"),
                  "canary": (desired.get("canary") or {}).get("release", {}).get("version"),
                  "running": {row["robot_id"]: row["running"] for row in coordinator.status()}},
        "backlog_episodes": len(pending_raw(store)),
        "latest_snapshot": (store.get_json_versioned(SNAPSHOT_LATEST_KEY)[0] or {}).get("snapshot_id"),
        "latest_checkpoint": (store.get_json_versioned(CHECKPOINT_LATEST_KEY)[0] or {}).get("checkpoint"),
    }, indent=2))


@app.command()
def rollout(config: ConfigOption = None, model_version: str = "") -> None:
    """Staged rollout of the champion: canary robots, watch success, then all; roll back on regression."""
    from flows.rollout import rollout

    _run(_load(config), rollout, model_version=model_version)


@app.command()
def flywheel(
    config: ConfigOption = None,
    rounds: Annotated[int, typer.Option(help="Online rounds after the offline stage.")] = 1,
    robots: Annotated[int, typer.Option(help="Fleet size (default: fleet.robots).")] = 0,
    auto_approve: Annotated[bool, typer.Option(
        "--auto-approve", help="Let a passing gate stand in for the reviewer (sets promotion.auto_approve).")] = False,
) -> None:
    """The main job: offline stage, then K rounds of the whole flywheel with the sim fleet deployed."""
    from flows.flywheel import flywheel

    settings = _load(config)
    if auto_approve:
        settings.promotion.auto_approve = True
    _run(settings, flywheel, rounds=rounds, robots=robots)


@app.command()
def experiment(config: ConfigOption = None) -> None:
    """Paper table: BC, HG-DAgger, RECAP, IQL, LWD offline and online from one pretrained policy, equal
    budgets, paired evaluation seeds and significance tests (the config's `experiment` section).

    2 CPU cores: --config configs/experiment-reduced.yaml (<30 min) or configs/experiment-long.yaml (long
    tasks, <45 min); GPU machine: configs/experiment-full.yaml.
    """
    from flows.experiment import experiment

    _run(_load(config), experiment)


@app.command("experiment-pool")
def experiment_pool(
    results: Annotated[list[Path], typer.Argument(help="results.json of each run (one per training seed).")],
    out: Annotated[Path | None, typer.Option(help="Also write pooled.json and pooled.md into this folder.")] = None,
) -> None:
    """Pool `lwd experiment` runs on different training seeds: success over all their evaluation
    episodes, each run's figure, and one paired test per arm against the reference arm."""
    from lwd_core.experiment import pool_runs, pooled_markdown

    try:
        pooled = pool_runs([json.loads(path.read_text()) for path in results])
    except (OSError, ValueError, KeyError) as exc:
        raise typer.BadParameter(f"{type(exc).__name__}: {exc}") from exc
    table = pooled_markdown(pooled)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "pooled.json").write_text(json.dumps(pooled, indent=2))
        (out / "pooled.md").write_text(table + "\n")
    typer.echo(table)


@fleet_app.command("up")
def fleet_up(
    config: ConfigOption = None,
    robots: Annotated[int, typer.Option(help="Robots to start (default: fleet.robots).")] = 0,
    episodes: Annotated[int, typer.Option(help="Episodes per robot, then stop (0: until Ctrl-C).")] = 0,
    duration: Annotated[float, typer.Option(help="Stop after this many seconds (0: no limit).")] = 0.0,
    host: Annotated[str, typer.Option(help="This machine's name in fleet.hosts: start only its robots.")] = "",
) -> None:
    """Start N simulated robots as supervised actor processes with their edge clients."""
    from flows.fleet import fleet_up

    _run(_load(config), fleet_up, robots=robots, episodes=episodes, duration=duration, host=host)


@fleet_app.command("status")
def fleet_status(config: ConfigOption = None) -> None:
    """Show desired and running model version per robot."""
    from flows.fleet import fleet_status

    _run(_load(config), fleet_status)


@keys_app.command("generate")
def keys_generate(
    config: ConfigOption = None,
    robots: Annotated[int, typer.Option(help="Robots robot-00.. to make keys for (default: fleet.robots).")] = 0,
    rotate: Annotated[bool, typer.Option("--rotate", help="Replace existing keys instead of keeping them.")] = False,
    release: Annotated[bool, typer.Option(help="Also the release key (the rollout side's).")] = True,
) -> None:
    """Make the missing key pairs in fleet.keys_dir (default <data_dir>/keys); --rotate replaces them.
    Give each robot (and teleoperator) only its own .key file, ingestion their .pub files, actors
    release.pub."""
    from lwd_core.security import RELEASE, keyring_for
    from lwd_core.suite import fleet_robot_ids

    settings = _load(config)
    keyring = keyring_for(settings, generate=False)
    names = [*fleet_robot_ids(robots or settings.fleet.robots, settings.fleet.hosts), *settings.fleet.teleoperators]
    written = keyring.generate(names, release=release, rotate=rotate)
    typer.echo(json.dumps({"keys_dir": str(keyring.root), "written": written,
                           "fingerprints": {name: keyring.fingerprint(name)
                                            for name in [*names, *([RELEASE] if release else [])]}}, indent=2))


@import_app.command("lerobot")
def import_lerobot(
    path: Annotated[Path, typer.Argument(help="The dataset's root directory (meta/info.json, data/).")],
    config: ConfigOption = None,
) -> None:
    """A LeRobotDataset v3 into the offline buffer through ingestion: a bad episode is quarantined with
    its reason, the others land exactly once. Feature names: the config's `lerobot` section."""
    from flows.lerobot import import_lerobot as flow

    _run(_load(config), flow, path=str(path.resolve()))


@export_app.command("lerobot")
def export_lerobot(
    snapshot: Annotated[str, typer.Argument(help="Snapshot id ('latest' for the newest).")],
    path: Annotated[Path, typer.Argument(help="A new or empty directory for the dataset.")],
    config: ConfigOption = None,
) -> None:
    """A snapshot's episodes as a LeRobotDataset v3 that LeRobot's `LeRobotDataset` opens."""
    from flows.lerobot import export_lerobot as flow

    _run(_load(config), flow, snapshot_id="" if snapshot == "latest" else snapshot, path=str(path.resolve()))


def main() -> None:
    apply_service_defaults()  # before Prefect or MLflow is imported: they read these at import
    app()


if __name__ == "__main__":
    main()
