"""(e) the framework floor for benchmarks/serve.py: the service's stack answering a constant.

    python benchmarks/floor_server.py --port 8003 --workers auto

FastAPI + uvicorn in the same process layout as `make run` (app/serve.py: N processes, each with its own
SO_REUSEPORT socket), the same multipart form (`image` file + `number` field, parsed by FastAPI), and a
fixed answer of the same shape: no decoding, no inference, no metrics, no logging. What it costs per
request is what the framework itself costs; the service's CPU above it is ours.
"""

from __future__ import annotations

import argparse
import multiprocessing
import signal
import socket
import sys
from pathlib import Path

import uvicorn
from fastapi import FastAPI, Form, UploadFile

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from app.cgroup import cpu_limit  # noqa: E402  # what `make run`'s --workers auto counts

app = FastAPI(title="DigitSum floor: the framework alone")
ANSWER = {"digit": 7, "sum": 7, "number": 0, "digit_confidence": 1.0, "sum_confidence": 1.0,
          "digit_probabilities": [0.0] * 7 + [1.0] + [0.0] * 2}  # fmt: skip


@app.post("/predict")
async def predict(image: UploadFile, number: int = Form()) -> dict[str, object]:
    return ANSWER  # the form is parsed (and the upload spooled) by FastAPI before this runs


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


def serve(host: str, port: int) -> None:
    """One worker: its own socket in the port's SO_REUSEPORT group, as app/serve.py does."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    uvicorn.Server(uvicorn.Config("benchmarks.floor_server:app", access_log=False, log_level="warning")).run(
        sockets=[sock]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8003)
    parser.add_argument("--workers", default="auto", help="a number, or auto: as many as `make run` starts")
    args = parser.parse_args()
    count = cpu_limit()[0] if args.workers == "auto" else int(args.workers)
    spawn = multiprocessing.get_context("spawn")
    workers = [spawn.Process(target=serve, args=(args.host, args.port)) for _ in range(count)]
    for worker in workers:
        worker.start()

    def stop(signum: int, frame: object) -> None:
        for worker in workers:
            worker.terminate()

    signal.signal(signal.SIGTERM, stop)
    for worker in workers:
        worker.join()


if __name__ == "__main__":
    main()
