"""Service configuration: environment variables prefixed DIGITSUM_ (or a .env file)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.errors import StartupError

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "models" / "digitsum.pt"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DIGITSUM_", env_file=".env", extra="ignore")

    model_path: Path = Field(DEFAULT_MODEL, description="TorchScript checkpoint; its card (.json) beside it")
    device: Literal["auto", "cuda", "cpu"] = Field("auto", description="auto: CUDA when available, else CPU")
    max_upload_bytes: int = Field(5 * 1024 * 1024, gt=0, description="request body cap for /predict")
    max_pixels: int = Field(40_000_000, gt=0, description="image width x height cap, checked from the header")
    max_batch_size: int = Field(64, ge=1, le=4096, description="most requests in one forward pass")
    max_batch_wait_ms: float = Field(2.0, ge=0, le=1000, description="extra wait to fill a batch, only under load")
    max_queue: int = Field(1024, ge=1, description="requests waiting for the model before 503")
    request_timeout_s: float = Field(10.0, gt=0, description="longest a request may wait for the model")
    upload_timeout_s: float = Field(30.0, gt=0, description="longest a client may take to send its body (else 408)")
    drain_timeout_s: float = Field(20.0, gt=0, description="on SIGTERM, longest to finish in-flight requests")
    # 1: torch's default (a thread per core) spins on cores the event loop, decoding and the other workers need;
    # in benchmarks/results/serve.md it adds 70% to the naive server's CPU per request and cuts LitServe's req/s 8x
    torch_threads: int = Field(1, ge=0, description="intra-op threads per worker process; 0: torch's default")
    decode_threads: int = Field(2, ge=1, le=64, description="threads per worker decoding uploads (they share a GIL)")
    low_confidence: float | None = Field(
        None,
        ge=0,
        le=1,
        description="digit confidence under which low_confidence is true; unset: the threshold calibrated "
        "into the model card (0.6 for a card without one)",
    )
    cors_origins: list[str] = Field([], description='allowed browser origins, JSON list, e.g. ["https://x.org"]')


@lru_cache
def get_settings() -> Settings:
    """The settings, read once; a bad value stops startup with one line saying what to fix."""
    try:
        return Settings()
    except ValidationError as exc:
        error = exc.errors()[0]
        name = "DIGITSUM_" + "_".join(str(part) for part in error["loc"]).upper()
        raise StartupError(f"Invalid setting {name}={error.get('input')!r}: {error['msg']}.") from None
