"""Typed configuration: the one place every setting lives.

Precedence, highest first: explicit keyword arguments, environment variables (``LWD_`` prefix, ``__``
between nested names, e.g. ``LWD_ALGO__DISCOUNT=0.98``), a YAML file (``load_config(path)``, else
``LWD_CONFIG`` or ``./lwd.yaml``), then the defaults below. Settings are loaded once at the edge (a CLI
command, a deployment's flow run, a child process) and passed down as the ``LWDConfig`` object.
Secrets are ``SecretStr``: they print and serialise (flow-run parameters, logs) masked. The defaults are the embedded stack: a local object store under the project
data dir, MLflow on SQLite, and an ephemeral Prefect API.
"""

from __future__ import annotations

import json
import os
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

CONFIG_FILE_ENV = "LWD_CONFIG"
DEFAULT_CONFIG_FILE = "lwd.yaml"
# The YAML file load_config was given, for the settings sources of that one construction.
_CHOSEN_FILE: ContextVar[Path | None] = ContextVar("lwd_config_file", default=None)


def reveal(secret: SecretStr | str | None) -> str | None:
    """The plain value of a secret setting, where a library needs it (S3 client, key derivation)."""
    return secret.get_secret_value() if isinstance(secret, SecretStr) else secret


def default_data_dir() -> Path:
    return Path(os.environ.get("LWD_DATA_DIR", Path.cwd() / ".lwd")).resolve()


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class StorageConfig(_Section):
    """Object store: ``file://`` (default, under the data dir) or ``s3://bucket/prefix``."""

    url: str = ""
    # s3fs-style options for s3:// (endpoint, key, secret, region); empty for file://.
    endpoint_url: str | None = None
    key: SecretStr | None = None
    secret: SecretStr | None = None
    region: str | None = None
    # Threads per ingest micro-batch for object reads and writes (S3 round trips overlap; a local
    # disk gains little, so scale a local ingest out with several ingest runs at once).
    io_workers: int = Field(default=4, ge=1, le=64)
    # Attempts per S3 request on transient errors before the caller sees the failure, in botocore and
    # in s3fs's wrapper around it. None keeps the libraries' defaults (botocore's retries inside five
    # of s3fs's: seconds per failed call while the store is down); callers that retry on their own
    # schedule anyway (robots' uploaders spool and retry) can take 1 to fail fast.
    request_retries: int | None = Field(default=None, ge=1, le=20)

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, url: str) -> str:
        if url and "://" in url and not url.startswith(("file://", "s3://", "memory://")):
            raise ValueError(f"unsupported storage url {url!r}: use file://, s3:// or memory://")
        return url


class TrackingConfig(_Section):
    mlflow_uri: str = ""
    experiment: str = "lwd-flywheel"
    registered_model: str = "lwd-policy"
    # Where a new experiment keeps run and model artifacts; empty: the server's default, or
    # <data_dir>/mlartifacts with the embedded sqlite store (not ./mlruns of whatever the cwd is).
    artifact_location: str = ""
    # The MLflow UI's address, for links read outside it (Prefect artifacts, events). Links inside the
    # UI (version description, gate run note) are always relative, so they work on any host and port.
    ui_url: str = ""

    def version_route(self, version: str) -> str:
        return f"/models/{self.registered_model}/versions/{version}"

    @staticmethod
    def run_route(run_id: str) -> str:
        return f"/runs/{run_id}"  # the UI finds the run's experiment itself

    @staticmethod
    def ui_link(route: str) -> str:
        """A link from one MLflow UI page to another (``route``: ``/models/...``, ``/runs/...``)."""
        return f"#{route}"

    def public_link(self, route: str) -> str:
        """A link into the MLflow UI from outside it: absolute with ``ui_url``, else the route to open."""
        return f"{self.ui_url.rstrip('/')}/{self.ui_link(route)}" if self.ui_url else self.ui_link(route)

    def markdown_link(self, text: str, route: str) -> str:
        """``text`` linked to an MLflow UI page, for markdown shown outside it (without ``ui_url``, the
        route in words: a relative link would open a page of the server showing it)."""
        link = self.public_link(route)
        return f"[{text}]({link})" if self.ui_url else f"{text} (MLflow UI {link})"


class OrchestrationConfig(_Section):
    # Empty: Prefect's ephemeral API (SQLite). Set to e.g. http://127.0.0.1:4200/api for a server.
    prefect_api_url: str = ""
    work_pool: str = "lwd-process"


class HumanConfig(BaseModel):
    """The person who watches the fleet's rollouts and takes over (times in seconds of robot time;
    behaviour in lwd_core/sim/teleop.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # "realistic": a person with the limits below. "oracle": OGBench's expert, instant and exact, with no
    # budget (the limits below are then ignored): every takeover is a perfect expert label.
    kind: Literal["realistic", "oracle"] = "realistic"
    # From noticing a stall or drift to having control; the robot keeps acting meanwhile.
    reaction_s: float = Field(default=0.5, ge=0.0)
    # Std of the noise on each corrective action (actions lie in [-1, 1]).
    action_noise: float = Field(default=0.1, ge=0.0)
    # Chance that a planned sub-goal is wrong (a misjudged spot for the block), pursued for
    # ``wrong_subgoal_s`` before the person notices and re-plans.
    wrong_subgoal_prob: float = Field(default=0.15, ge=0.0, le=1.0)
    wrong_subgoal_s: float = Field(default=1.5, gt=0.0)
    # Seconds of control the person can give per robot hour (None: unlimited). Each episode may spend
    # its share, budget x its time limit / 1 h, so no episode's help depends on which robot or process
    # ran the ones before it.
    budget_s_per_robot_hour: float | None = Field(default=720.0, ge=0.0)
    # Std (metres) of the person's estimate of each position they judge progress by.
    perception_noise_m: float = Field(default=0.005, ge=0.0)
    # What counts as stuck: less than ``min_progress_m`` over ``stall_s``, or ``drift_m`` past the best.
    stall_s: float = Field(default=2.0, gt=0.0)
    min_progress_m: float = Field(default=0.02, ge=0.0)
    drift_m: float = Field(default=0.15, gt=0.0)
    # How long one takeover lasts (it also ends when the subgoal is done).
    takeover_s: float = Field(default=3.0, gt=0.0)

    def effective(self) -> HumanConfig:
        """The settings that act: the oracle's limits switched off."""
        if self.kind == "realistic":
            return self
        return self.model_copy(update={"reaction_s": 0.0, "action_noise": 0.0, "wrong_subgoal_prob": 0.0,
                                       "budget_s_per_robot_hour": None, "perception_noise_m": 0.0})


class FleetConfig(_Section):
    # Robots per fleet host (one host unless `hosts` names several).
    robots: int = Field(default=4, ge=1, le=1024)
    # Machines that run robots (`lwd fleet up --host NAME`), each with `robots` robots named
    # <host>-robot-NN so hosts never collide; empty: one host, robot-NN.
    hosts: list[Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{0,31}$")]] = Field(default_factory=list)
    canary_fraction: float = Field(default=0.25, gt=0.0, le=1.0)
    # Task ids the fleet runs; empty means the whole suite.
    tasks: list[str] = Field(default_factory=list)
    episodes_per_round: int = Field(default=16, ge=1)
    # Ed25519 keyring (lwd_core.security): robots' and the release key pairs; empty: <data_dir>/keys.
    # On a robot, only its own private key need be there; ingestion needs only the public keys.
    keys_dir: str = ""
    # Ingestion quarantines episodes without their robot's valid signature.
    require_signatures: bool = True
    # Identities (not robot ids) whose uploads may be demonstrations or play; robots upload rollouts
    # only. Each signs like a robot: its public key is <keys_dir>/robots/<identity>.pub.
    teleoperators: list[str] = Field(default_factory=list)
    # The person who watches rollouts and takes over stalled or drifting ones (steps flagged as
    # interventions): realistic by default, or the oracle; null: nobody intervenes.
    human: HumanConfig | None = Field(default_factory=HumanConfig)
    # Robots sharing one actor process (one batched policy call); 0: spread over the CPU cores.
    robots_per_process: int = Field(default=0, ge=0)
    # Cap on steps per fleet episode; 0 means each task's own time limit.
    max_episode_steps: int = Field(default=0, ge=0)
    # Pace robots at this multiple of real time (20 Hz control; 1.0 = real robots); 0 = simulator speed.
    realtime_factor: float = Field(default=0.0, ge=0.0)
    # How often actors re-read the coordinator and heartbeat.
    poll_seconds: float = Field(default=1.0, gt=0.0)


class DatasetConfig(_Section):
    """The generated offline dataset; shares are of robot time (steps)."""

    total_steps: int = Field(default=40_000, ge=1)
    demo: float = Field(default=0.50, ge=0.0, le=1.0)
    failed_rollout: float = Field(default=0.35, ge=0.0, le=1.0)
    play: float = Field(default=0.15, ge=0.0, le=1.0)
    long_share: float = Field(default=0.70, ge=0.0, le=1.0)
    seed: int = 0


class AlgoConfig(_Section):
    """Learning settings every method shares (the learner's flow and optimiser, n-step, replay and stage
    budgets); defaults follow the QAM reference settings on OGBench. A method's own hyperparameters are
    its agent's config, set under ``agents``."""

    discount: float = Field(default=0.99, gt=0.0, le=1.0)
    action_chunk: int = Field(default=5, ge=1)
    batch_size: int = Field(default=256, ge=1)
    learning_rate: float = Field(default=3e-4, gt=0.0)
    grad_clip: float = Field(default=1.0, gt=0.0)
    hidden_dims: list[int] = Field(default_factory=lambda: [512, 512, 512, 512])
    flow_steps: int = Field(default=10, ge=1)
    # Matmul dtype of the networks' hidden layers: "bfloat16" uses a GPU's tensor cores (parameters,
    # optimiser state, LayerNorm, output layers and losses stay float32). On CPU it is slower (0.8x).
    compute_dtype: Literal["float32", "bfloat16"] = "float32"
    # Per method, its agent's settings, e.g. {"lwd": {"qam_beta": 0.03, "best_of_n": 8}}. Each agent's
    # config, with every default documented, is in its file (lwd_core/algo/agents/<method>.py); a
    # setting the agent does not know is refused when a run is planned.
    agents: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # Staging (the paper's): the pretrained policy is BC flow matching on demonstrations for
    # ``pretrain_steps``; then ``warmup_steps`` of critic + value with the policy frozen; then extraction.
    pretrain_steps: int = Field(default=3000, ge=0)
    warmup_steps: int = Field(default=1000, ge=0)
    # Dynamic n-step: per (horizon class, stage).
    nstep_offline_long: int = Field(default=10, ge=1)
    nstep_offline_short: int = Field(default=3, ge=1)
    nstep_online: int = Field(default=1, ge=1)
    long_horizon_threshold: int = Field(default=400, ge=1)
    online_ratio: float = Field(default=0.5, ge=0.0, le=1.0)
    # Transitions a training run holds per buffer (offline, online) on the host, ~0.6 kB each; a
    # larger buffer contributes a seeded uniform choice of whole episodes. 0: no cap.
    replay_capacity: int = Field(default=1_000_000, ge=0)
    # Extraction updates of the offline stage, after pretraining and warm-up.
    offline_steps: int = Field(default=2000, ge=0)
    # Online update budget per round: at least ``online_steps_per_round`` updates, and enough that every
    # online transition, the round's new ones included, is sampled ``samples_per_insert`` times in
    # expectation during the round (update-to-data ratio; see trainer.online_update_budget).
    online_steps_per_round: int = Field(default=500, ge=0)
    samples_per_insert: float = Field(default=1.0, ge=0.0)
    # Committed checkpoints during a training run: a crashed or retried run resumes from the last one.
    checkpoint_every: int = Field(default=500, ge=1)
    seed: int = 0

    def with_agent(self, method: str, **settings: Any) -> AlgoConfig:
        """A copy with these settings added to ``method``'s agent config."""
        return self.model_copy(update={"agents": {**self.agents, method: {**self.agents.get(method, {}), **settings}}})


class ExperimentConfig(_Section):
    """`lwd experiment`: every arm from the same pretrained start, the same fleet budget for every arm
    that learns from the fleet, evaluated on fixed seeds disjoint from the training seeds."""

    # Empty: the four short tasks.
    tasks: list[str] = Field(default_factory=list)
    arms: list[str] = Field(default_factory=lambda: ["bc", "hgdagger", "recap", "iql", "lwd-offline", "lwd-online"])
    rounds: int = Field(default=3, ge=0)
    # Fleet episodes per round for each arm that learns online, spread evenly over the tasks.
    episodes_per_round: int = Field(default=40, ge=1)
    # Final evaluation episodes per task (paired across arms: same seeds), and per round for the curves.
    eval_episodes_per_task: int = Field(default=50, ge=1)
    curve_episodes_per_task: int = Field(default=20, ge=1)
    # Evaluation seeds hash from this base under an "eval/" namespace; training seeds under "train/".
    eval_seed: int = 1_000_003
    train_seed: int = 0
    # Offline data for the experiment: clean demonstrations per task, failed rollouts of the pretrained
    # policy per task, and play episodes per task.
    demos_per_task: int = Field(default=25, ge=1)
    failed_rollouts_per_task: int = Field(default=20, ge=0)
    play_per_task: int = Field(default=10, ge=0)
    # Simulator worker processes (0: one per CPU core).
    workers: int = Field(default=0, ge=0)
    # The person who watches the online arms' fleet episodes and takes over (the same for every arm).
    human: HumanConfig = Field(default_factory=HumanConfig)


class GateConfig(_Section):
    """Evaluation gate: candidate vs champion on the sim suite, same seeds for both."""

    episodes_per_task: int = Field(default=4, ge=1)
    # Pass when candidate mean success >= champion mean - tolerance (non-inferiority).
    tolerance: float = Field(default=0.05, ge=0.0, le=1.0)
    # Without a champion, the candidate must reach this mean success.
    min_success: float = Field(default=0.0, ge=0.0, le=1.0)
    max_steps: int = Field(default=0, ge=0)  # 0: each task's time limit
    seed: int = 0


class PromotionConfig(_Section):
    # Off by default: a reviewer moves alias `champion`. On: the gate's pass is the approval.
    auto_approve: bool = False
    # How long `promote` waits for a reviewer before returning "awaiting approval" (0: do not wait).
    approval_timeout_seconds: float = Field(default=0.0, ge=0.0)
    # How long a suspended review (a deployment run waiting on its form) waits before it fails.
    review_timeout_seconds: int = Field(default=7 * 24 * 3600, gt=0)


class RolloutConfig(_Section):
    # The canary's evidence before it may reach every robot: at least this many episodes on the new
    # release, from at least this many canary robots (lwd_core.gating.canary_decision); short of it at
    # timeout_seconds, it rolls back.
    canary_min_episodes: int = Field(default=20, ge=1)
    canary_min_robots: int = Field(default=2, ge=1)
    # Non-inferiority margin: the 95% interval of (canary - previous release) autonomous success must
    # lie above -regression_tolerance.
    regression_tolerance: float = Field(default=0.25, ge=0.0, le=1.0)
    timeout_seconds: float = Field(default=900.0, gt=0.0)
    # Actors silent longer than this are not waited for.
    heartbeat_timeout_seconds: float = Field(default=60.0, gt=0.0)


class LeRobotConfig(_Section):
    """Which of a LeRobotDataset's features are what, for `lwd import lerobot` (datasets name their state
    and action as their robot does)."""

    state: str = "observation.state"  # the scene's state (padded on import) or the suite's full observation
    action: str = "action"
    success: str = "next.success"  # a per-frame bool; the episode ends at the first frame where it is true
    source: Literal["demo", "play"] = "demo"  # what the imported episodes are (a person's: no takeovers)
    # The dataset's task text -> a suite task id; a text not listed must be a suite task's instruction.
    tasks: dict[str, str] = Field(default_factory=dict)
    uploader: str = "lerobot-import"  # the identity imported episodes carry (a teleoperator's)


class LWDConfig(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="LWD_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_assignment=True,
    )

    data_dir: Path = Field(default_factory=default_data_dir)
    # Compiled XLA programs shared by every process on this machine (training runs, gates, robots):
    # empty means <data_dir>/jax-cache, "off" none (lwd_core.algo.compilation).
    compilation_cache_dir: str = ""
    storage: StorageConfig = Field(default_factory=StorageConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    orchestration: OrchestrationConfig = Field(default_factory=OrchestrationConfig)
    fleet: FleetConfig = Field(default_factory=FleetConfig)
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    promotion: PromotionConfig = Field(default_factory=PromotionConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    algo: AlgoConfig = Field(default_factory=AlgoConfig)
    experiment: ExperimentConfig = Field(default_factory=ExperimentConfig)
    lerobot: LeRobotConfig = Field(default_factory=LeRobotConfig)

    @model_validator(mode="after")
    def _fill_embedded_defaults(self) -> LWDConfig:
        # Derived from data_dir so that pointing LWD_DATA_DIR elsewhere moves the whole embedded stack.
        data_dir = Path(self.data_dir).resolve()
        if not self.compilation_cache_dir:
            self.compilation_cache_dir = str(data_dir / "jax-cache")
        if not self.storage.url:
            self.storage.url = (data_dir / "store").as_uri()
        if not self.tracking.mlflow_uri:
            self.tracking.mlflow_uri = f"sqlite:///{data_dir / 'mlflow.db'}"
        if not self.tracking.artifact_location and self.tracking.mlflow_uri.startswith("sqlite:"):
            self.tracking.artifact_location = (data_dir / "mlartifacts").as_uri()
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        yaml_file = _config_file()
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if yaml_file is not None:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=yaml_file))
        return tuple(sources)

    def public_dict(self) -> dict[str, Any]:
        """Settings with secrets masked, for logs and MLflow params."""
        data = self.model_dump(mode="json")
        for section, key in (("storage", "secret"), ("storage", "key")):
            if data[section].get(key):
                data[section][key] = "***"
        return data

    def private_json(self) -> str:
        """Every setting, secrets in the clear: what a child process of this run loads with
        :meth:`from_private_json` (write it where only this user can read it)."""
        def plain(value: Any) -> Any:
            if isinstance(value, SecretStr):
                return value.get_secret_value()
            if isinstance(value, Path):
                return str(value)
            raise TypeError(f"cannot serialise {type(value).__name__}")

        return json.dumps(self.model_dump(mode="python"), default=plain)

    @classmethod
    def from_private_json(cls, text: str) -> LWDConfig:
        # model_validate skips the settings sources: the child gets exactly its parent's settings.
        return cls.model_validate(json.loads(text))


def _config_file() -> Path | None:
    chosen = _CHOSEN_FILE.get()
    if chosen is not None:
        if not chosen.is_file():
            raise FileNotFoundError(f"config file {chosen} does not exist")
        return chosen
    explicit = os.environ.get(CONFIG_FILE_ENV)
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise FileNotFoundError(f"{CONFIG_FILE_ENV}={explicit} does not name a file")
        return path
    local = Path.cwd() / DEFAULT_CONFIG_FILE
    return local if local.is_file() else None


def load_config(path: str | Path | None = None, **overrides: Any) -> LWDConfig:
    """Settings from the YAML file ``path`` (None: ``$LWD_CONFIG`` or ``./lwd.yaml``), the environment
    and ``overrides``; see the module docstring for the precedence."""
    token = _CHOSEN_FILE.set(Path(path).resolve() if path else None)
    try:
        return LWDConfig(**overrides)
    finally:
        _CHOSEN_FILE.reset(token)
