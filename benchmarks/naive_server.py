"""The FastAPI server from the tutorials, as the baseline for benchmarks/serve.py.

    uvicorn benchmarks.naive_server:app --port 8001

Same checkpoint, same `app.preprocess.preprocess`, same answer fields as the service, but written the way
most tutorials write it: decode and forward inside an `async def` handler, one image per forward pass,
no batching, nothing off the event loop.
"""

from __future__ import annotations

import numpy as np
import torch
from fastapi import FastAPI, Form, UploadFile

from app.preprocess import preprocess
from app.settings import DEFAULT_MODEL

MAX_PIXELS = 40_000_000

app = FastAPI(title="DigitSum, the tutorial way")
model = torch.jit.load(str(DEFAULT_MODEL), map_location="cpu").eval()


@app.post("/predict")
async def predict(image: UploadFile, number: int = Form()) -> dict[str, object]:
    data = await image.read()
    pixels = preprocess(data, MAX_PIXELS)  # Image.open -> (28, 28), the service's own preprocessing
    with torch.no_grad():
        digit_lp, sum_lp = model(torch.from_numpy(pixels)[None, None], torch.tensor([number]))  # (1, 10), (1, 19)
    digit_p, sum_p = digit_lp.exp()[0].numpy(), sum_lp.exp()[0].numpy()
    digit, total = int(np.argmax(digit_p)), int(np.argmax(sum_p))
    return {
        "digit": digit,
        "sum": total,
        "number": number,
        "digit_confidence": round(float(digit_p[digit]), 6),
        "sum_confidence": round(float(sum_p[total]), 6),
        "digit_probabilities": [round(float(p), 6) for p in digit_p],
    }


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}
