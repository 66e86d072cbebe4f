"""The same checkpoint and preprocessing behind Ray Serve, for benchmarks/serve.py.

    python benchmarks/rayserve_server.py --port 8005 --max-batch-size 16 --batch-wait-timeout-s 0.002

A FastAPI ingress deployment (`POST /predict`, the same multipart form: `image` file + `number` field)
behind Ray Serve's HTTP proxy: the proxy actor takes the request and routes it to a replica, which parses
the form, decodes with `app.preprocess.preprocess`, and awaits a `@serve.batch` forward that groups
concurrent requests of the replica (`max_batch_size`, `batch_wait_timeout_s`). A local Ray cluster is
started here with usage stats off (RAY_USAGE_STATS_ENABLED=0) and no dashboard, so nothing reaches the
network; SIGTERM shuts that cluster down.
"""

# no `from __future__ import annotations`: Serve's class ingress would then read `image: UploadFile` as a query
# parameter (it answered 422 "query.image: Field required")
import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from anywhere
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # before ray is imported: no usage report, no prompt

import numpy as np  # noqa: E402
import ray  # noqa: E402
import torch  # noqa: E402
from fastapi import FastAPI, File, Form, HTTPException, UploadFile  # noqa: E402
from ray import serve  # noqa: E402

from app.preprocess import preprocess  # noqa: E402
from app.settings import DEFAULT_MODEL  # noqa: E402
from app.upload import ImageError  # noqa: E402
from benchmarks.answer import MAX_PIXELS, answer, network  # noqa: E402

api = FastAPI(title="DigitSum behind Ray Serve")


@serve.deployment
@serve.ingress(api)
class DigitSum:
    def __init__(self, max_batch_size: int, batch_wait_timeout_s: float, torch_threads: int) -> None:
        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.model = torch.jit.load(str(DEFAULT_MODEL), map_location="cpu").eval()
        # Ray's stubs type @serve.batch for plain functions only: each use of the method below needs an ignore
        self.forward.set_max_batch_size(max_batch_size)  # type: ignore[attr-defined, misc]
        self.forward.set_batch_wait_timeout_s(batch_wait_timeout_s)  # type: ignore[attr-defined, misc]

    @api.post("/predict")
    async def predict(self, image: Annotated[UploadFile, File()], number: Annotated[int, Form()]) -> dict[str, object]:
        try:
            pixels = preprocess(await image.read(), MAX_PIXELS)  # (28, 28) float32
        except ImageError as exc:
            raise HTTPException(422, str(exc)) from None
        digit_p, sum_p, nondigit = await self.forward(pixels, number)  # type: ignore[misc, call-arg]
        return answer(digit_p, sum_p, number, nondigit)

    @api.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.002)  # type: ignore[arg-type]
    async def forward(self, pixels: list[np.ndarray], numbers: list[int]) -> list[tuple[np.ndarray, np.ndarray, float]]:  # type: ignore[misc]
        images = torch.from_numpy(np.stack(pixels)).unsqueeze(1)  # (B, 1, 28, 28)
        with torch.inference_mode():
            digit_lp, sum_lp, nondigit = network(self.model, images, torch.tensor(numbers))  # (B, 10), (B, 19), (B,)
        return list(zip(digit_lp.exp().numpy(), sum_lp.exp().numpy(), nondigit.tolist(), strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8005)
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--batch-wait-timeout-s", type=float, default=0.002)
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--max-ongoing-requests", type=int, default=64, help="per replica (Serve's default: 5)")
    parser.add_argument("--torch-threads", type=int, default=1, help="intra-op threads per replica; 0: torch's default")
    args = parser.parse_args()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, object_store_memory=200 * 2**20,
             logging_level=logging.WARNING, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})  # fmt: skip
    serve.start(http_options={"host": "127.0.0.1", "port": args.port}, logging_config={"log_level": "WARNING"})
    deployment = DigitSum.options(  # type: ignore[attr-defined]
        num_replicas=args.replicas,
        max_ongoing_requests=args.max_ongoing_requests,
        ray_actor_options={"num_cpus": 0},  # the replicas share the cores with the proxy, as every server here does
    )
    serve.run(deployment.bind(args.max_batch_size, args.batch_wait_timeout_s, args.torch_threads), route_prefix="/")
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stopped.set())
    stopped.wait()
    ray.shutdown()  # the whole local cluster, Serve's actors with it (serve.shutdown() first took a minute on 2 cores)


if __name__ == "__main__":
    main()
