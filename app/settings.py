"""Service configuration: environment variables prefixed DIGITSUM_ (or a .env file)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from app.errors import StartupError

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "models" / "digitsum.pt"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DIGITSUM_", env_file=".env", extra="ignore")

    model_path: Path = Field(DEFAULT_MODEL, description="TorchScript checkpoint; its card (.json) beside it")
    device: Literal["auto", "cuda", "cpu"] = Field("auto", description="auto: CUDA when available, else CPU")
    max_upload_bytes: int = Field(5 * 1024 * 1024, gt=0, description="request body cap for /predict")
    max_pixels: int = Field(40_000_000, ge=256 * 256, description="image width x height cap, checked from the header")
    max_batch_size: int = Field(64, ge=1, le=4096, description="most requests in one forward pass")
    max_batch_wait_ms: float = Field(2.0, ge=0, le=1000, description="extra wait to fill a batch, only under load")
    max_queue: int = Field(1024, ge=1, description="requests waiting for the model before 503")
    request_timeout_s: float = Field(10.0, gt=0, description="longest a request may wait for the model")
    upload_timeout_s: float = Field(30.0, gt=0, description="longest a client may take to send its body (else 408)")
    upload_lanes: int = Field(
        2, ge=1, le=1024, description="bodies over 64 KB read at once per worker; the others wait their turn"
    )
    # the request head (app/http_limits.py): refused at once with 414 / 431 / 408, at a cost linear in what arrived
    max_url_bytes: int = Field(8192, ge=256, description="longest request target (path + query) before 414")
    max_header_bytes: int = Field(65536, ge=1024, description="total size of the request headers before 431")
    max_headers: int = Field(100, ge=8, description="most header lines in one request before 431")
    header_timeout_s: float = Field(10.0, gt=0, description="longest a connection may take to send a request head")
    max_connections: int = Field(
        4096, ge=16, description="open connections per worker; past it the longest-idle one is closed, else 503"
    )
    drain_timeout_s: float = Field(20.0, gt=0, description="on SIGTERM, longest to finish in-flight requests")
    # 1: torch's default (a thread per core) spins on cores the event loop, decoding and the other workers need;
    # (benchmarks/results/serve.md measures what it costs)
    torch_threads: int = Field(1, ge=0, description="intra-op threads per worker process; 0: torch's default")
    decode_processes: int = Field(2, ge=1, le=64, description="decoder processes per worker, for all but thumbnails")
    decode_cpu_s: float = Field(0.8, gt=0, le=60, description="CPU seconds one upload's decoding may take (else 413)")
    decode_memory_mb: int = Field(300, ge=64, description="memory one upload's decoding may add (else 413)")
    low_confidence: float | None = Field(
        None,
        ge=0,
        le=1,
        description="digit confidence under which low_confidence is true; unset: the threshold calibrated "
        "into the model card (0.6 for a card without one)",
    )
    nondigit_threshold: float | None = Field(
        None,
        ge=0,
        le=1,
        description="the non-digit detector's probability over which no_digit is true (1: never); unset: the "
        "threshold in the model card. Only for a checkpoint with a detector",
    )
    cors_origins: list[str] = Field([], description='allowed browser origins, JSON list, e.g. ["https://x.org"]')
    allowed_hosts: list[str] = Field(
        [], description='Host header values to answer (JSON list, e.g. ["digitsum.example.org"]); empty: any'
    )
    internal_port: int | None = Field(
        None, ge=1, le=65535, description="serve /metrics and /model only on this port (python -m app.serve binds it)"
    )
    allow_missing_card: bool = Field(False, description="serve a checkpoint without its card (sha256 unverified)")


@lru_cache
def get_settings() -> Settings:
    """The settings, read once; a bad value stops startup with one line saying what to fix."""
    try:
        return Settings()
    except ValidationError as exc:
        error = exc.errors()[0]
        name = "DIGITSUM_" + "_".join(str(part) for part in error["loc"]).upper()
        raise StartupError(f"Invalid setting {name}={error.get('input')!r}: {error['msg']}.") from None
    except SettingsError as exc:  # a list setting that is not JSON, e.g. DIGITSUM_CORS_ORIGINS=notjson
        field = str(exc).removeprefix('error parsing value for field "').partition('"')[0]
        name = f"DIGITSUM_{field.upper()}" if field else "a DIGITSUM_ setting"
        raise StartupError(
            f"Invalid setting {name}: it must be a JSON list, e.g. '[\"https://example.org\"]'."
        ) from None
