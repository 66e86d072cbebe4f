"""The same checkpoint and preprocessing behind LitServe, for benchmarks/serve.py.

    python benchmarks/litserve_server.py --port 8002 --max-batch-size 16 --batch-timeout 0.002

LitServe 0.2.19 parses the multipart form in its API server process (`await request.form()`) and hands
the FormData to `decode_request` in an inference worker process, where `request["image"]` is an
UploadFile and `request["number"]` a string. Batches are formed by LitServe's own loop
(`max_batch_size`, `batch_timeout`), stacked in `batch` and split again in `unbatch`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

import litserve as ls  # noqa: E402
from fastapi import HTTPException  # noqa: E402

from app.preprocess import preprocess  # noqa: E402
from app.settings import DEFAULT_MODEL  # noqa: E402
from app.upload import ImageError  # noqa: E402
from benchmarks.answer import MAX_PIXELS, answer, network  # noqa: E402

Answerable = tuple[np.ndarray, np.ndarray, int, float]  # one request's digit and sum probabilities, number, P(no digit)


class DigitSumAPI(ls.LitAPI):
    def __init__(self, torch_threads: int, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.torch_threads = torch_threads

    def setup(self, device: str) -> None:
        if self.torch_threads:
            torch.set_num_threads(self.torch_threads)
        self.model = torch.jit.load(str(DEFAULT_MODEL), map_location=device).eval()

    def decode_request(self, request):  # type: ignore[no-untyped-def, override]  # a FormData: unannotated on purpose
        try:
            number = int(request["number"])
            pixels = preprocess(request["image"].file.read(), MAX_PIXELS)  # (28, 28)
        except (KeyError, ValueError, ImageError) as exc:
            raise HTTPException(422, str(exc)) from None
        return pixels, number

    def batch(self, inputs: list[tuple[np.ndarray, int]]) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        images = torch.from_numpy(np.stack([pixels for pixels, _ in inputs])).unsqueeze(1)  # (B, 1, 28, 28)
        return images, torch.tensor([number for _, number in inputs])

    def predict(self, x):  # type: ignore[no-untyped-def, override]
        if self.max_batch_size == 1:  # LitServe then skips batch/unbatch and passes one decoded request
            return self.unbatch(self.predict(self.batch([x])))[0]
        images, numbers = x
        with torch.inference_mode():
            digit_lp, sum_lp, nondigit = network(self.model, images, numbers)  # (B, 10), (B, 19), (B,)
        return digit_lp.exp().numpy(), sum_lp.exp().numpy(), numbers.tolist(), nondigit.tolist()

    def unbatch(
        self, output: tuple[np.ndarray, np.ndarray, list[int], list[float]]
    ) -> list[tuple[np.ndarray, np.ndarray, int, float]]:  # type: ignore[override]
        return list(zip(*output, strict=True))

    def encode_response(self, output: Answerable) -> dict[str, object]:  # type: ignore[override]
        return answer(*output)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8002)
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--batch-timeout", type=float, default=0.002, help="seconds to wait for a batch to fill")
    parser.add_argument("--workers", type=int, default=1, help="inference worker processes (workers_per_device)")
    parser.add_argument("--api-servers", type=int, default=1, help="HTTP server processes (num_api_servers)")
    parser.add_argument("--torch-threads", type=int, default=0, help="intra-op threads per worker; 0: torch's default")
    parser.add_argument("--fast-queue", action="store_true", help="ZeroMQ instead of multiprocessing queues")
    args = parser.parse_args()
    api = DigitSumAPI(args.torch_threads, max_batch_size=args.max_batch_size, batch_timeout=args.batch_timeout)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=args.workers, fast_queue=args.fast_queue)
    log_level = os.environ.get("LITSERVE_LOG_LEVEL", "warning")
    server.run(host="127.0.0.1", port=args.port, num_api_servers=args.api_servers, log_level=log_level,
               generate_client_file=False)  # fmt: skip


if __name__ == "__main__":
    main()
