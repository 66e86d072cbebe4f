"""The FastAPI server from the tutorials, as the baseline for benchmarks/serve.py.

    uvicorn benchmarks.naive_server:app --port 8001

Same checkpoint, same `app.preprocess.preprocess`, same answer fields as the service, but written the way
most tutorials write it: decode and forward inside an `async def` handler, one image per forward pass,
no batching, nothing off the event loop.
"""

from __future__ import annotations

import torch
from fastapi import FastAPI, Form, UploadFile

from app.preprocess import preprocess
from app.settings import DEFAULT_MODEL
from benchmarks.answer import MAX_PIXELS, answer, network

app = FastAPI(title="DigitSum, the tutorial way")
model = torch.jit.load(str(DEFAULT_MODEL), map_location="cpu").eval()


@app.post("/predict")
async def predict(image: UploadFile, number: int = Form()) -> dict[str, object]:
    data = await image.read()
    pixels = preprocess(data, MAX_PIXELS)  # Image.open -> (28, 28), the service's own preprocessing
    with torch.no_grad():
        digit_lp, sum_lp, nondigit = network(model, torch.from_numpy(pixels)[None, None], torch.tensor([number]))
    return answer(digit_lp.exp()[0].numpy(), sum_lp.exp()[0].numpy(), number, float(nondigit[0]))


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}
