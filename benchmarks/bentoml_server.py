"""The same checkpoint and preprocessing behind BentoML's adaptive batching, for benchmarks/serve.py.

    python benchmarks/bentoml_server.py --port 8004 --max-batch-size 32 --max-latency-ms 20

BentoML 1.4's own layout for a batched model: an API service (`DigitSum`, `POST /predict`, the same
multipart form: `image` file + `number` field) decodes each upload with `app.preprocess.preprocess` and
calls a batchable model service (`Model.forward`) that it depends on. `bentoml serve` runs each service
in its own worker processes; the model service's CorkDispatcher groups the calls into batches
(`max_batch_size`, `max_latency_ms`, adapted to the measured batch times; a call it expects to miss
`max_latency_ms` is answered 503, so a tight one sheds load on a busy machine). Settings reach the decorators
through BENCH_BENTOML_* variables because `bentoml serve` imports this module in every worker.
BENTOML_DO_NOT_TRACK=true turns off its usage tracking, so it never tries the network.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # `bentoml serve` imports this from ROOT; the workers need app/ too

import bentoml  # noqa: E402
from bentoml.exceptions import InvalidArgument  # noqa: E402

from app.preprocess import preprocess  # noqa: E402
from app.settings import DEFAULT_MODEL  # noqa: E402
from app.upload import ImageError  # noqa: E402
from benchmarks.answer import MAX_PIXELS, answer, network  # noqa: E402

SETTINGS = {  # name -> default; each read from BENCH_BENTOML_<NAME>
    "max_batch_size": 32,
    "max_latency_ms": 1000,
    "api_workers": 1,
    "model_workers": 1,
    "torch_threads": 1,
}
CONFIG = {name: int(os.environ.get(f"BENCH_BENTOML_{name.upper()}", default)) for name, default in SETTINGS.items()}
PIXELS = 28 * 28  # a row sent to Model.forward: the 784 pixels, then the number


NO_ACCESS_LOG = {"access": {"enabled": False}}  # a log line per request costs ~0.1 ms; no other server here logs them


# BentoML 1.4.40's client replaces its aiohttp session after runner_connection.max_requests (100) calls and closes
# the old one with calls still in flight on it: under load every 100th call or so failed with "Server disconnected"
# (500s). Never recycling it is what a user would set after seeing those.
KEEP_CONNECTIONS = {"max_requests": 2**31, "max_age": 1e9}


@bentoml.service(workers=CONFIG["model_workers"], threads=1, logging=NO_ACCESS_LOG,
                 runner_connection=KEEP_CONNECTIONS)  # fmt: skip
class Model:
    def __init__(self) -> None:
        if CONFIG["torch_threads"]:
            torch.set_num_threads(CONFIG["torch_threads"])
        self.model = torch.jit.load(str(DEFAULT_MODEL), map_location="cpu").eval()

    @bentoml.api(batchable=True, max_batch_size=CONFIG["max_batch_size"], max_latency_ms=CONFIG["max_latency_ms"])
    def forward(self, rows: np.ndarray) -> np.ndarray:
        """(B, 785) float32 rows -> (B, 30): the 10 digit probabilities, the 19 sum probabilities, P(no digit)."""
        images = torch.from_numpy(np.ascontiguousarray(rows[:, :PIXELS])).reshape(-1, 1, 28, 28)
        numbers = torch.from_numpy(rows[:, PIXELS]).long()
        with torch.inference_mode():
            digit_lp, sum_lp, nondigit = network(self.model, images, numbers)  # (B, 10), (B, 19), (B,)
        return torch.cat([digit_lp.exp(), sum_lp.exp(), nondigit[:, None]], 1).numpy()


@bentoml.service(workers=CONFIG["api_workers"], logging=NO_ACCESS_LOG)
class DigitSum:
    model = bentoml.depends(Model)

    @bentoml.api(route="/predict")
    async def predict(self, image: Path, number: int) -> dict:  # type: ignore[type-arg]  # BentoML reads the annotation
        try:
            pixels = preprocess(image.read_bytes(), MAX_PIXELS)  # (28, 28) float32
        except ImageError as exc:
            raise InvalidArgument(str(exc)) from None
        row = np.append(pixels.reshape(-1), np.float32(number))[None]  # (1, 785)
        probabilities = (await self.model.to_async.forward(row))[0]  # (30,)
        return answer(probabilities[:10], probabilities[10:29], number, float(probabilities[29]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8004)
    for name, default in SETTINGS.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=default)
    args = parser.parse_args()
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "true"}
    env.update({f"BENCH_BENTOML_{name.upper()}": str(getattr(args, name)) for name in SETTINGS})
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    bentoml_cli = str(Path(sys.executable).parent / "bentoml")
    command = [bentoml_cli, "serve", "benchmarks.bentoml_server:DigitSum", "--host", "127.0.0.1",
               "--port", str(args.port), "--working-dir", str(ROOT)]  # fmt: skip
    os.chdir(ROOT)
    os.execve(bentoml_cli, command, env)  # the same process (and session), so serve.py can stop and measure it


if __name__ == "__main__":
    main()
