#!/usr/bin/env python3
"""The PyTorch reference server for bench/serve_bench.sh: what a Python user would write to serve
a flowscore model folder over HTTP with FastAPI + uvicorn.

    .venv/bin/python bench/pytorch_server.py --model DIR --port 8081 --threads 2 \
        [--inference threadpool|inline]

- The model is loaded with python/flowscore_torch.py in float32 (plain PyTorch, eval mode,
  torch.inference_mode() around every forward); torch.set_num_threads(--threads).
- POST /log_prob: `{"inputs": [[D numbers], ...]}` (application/json), or an NPY body
  (Content-Type: application/x-npy, float32 or float64, shape [n, D]) →
  `{"log_prob": [...], "bits_per_dim": [...]}`. Bad input → 400 `{"error": "..."}`.
- GET /ready, GET /health → 200 once the model is loaded (it is loaded before the socket opens).
- No batching across requests: one forward pass per request.
- --inference threadpool (default): parsing, the forward pass and the response are run in
  Starlette's threadpool (`run_in_threadpool`), exactly what FastAPI does with a plain `def`
  endpoint — the typical way to serve blocking model code. --inference inline: the same work runs
  directly in the `async def` handler, on the event loop (requests are then strictly serialised).
- One uvicorn worker process (one model copy), bound to 127.0.0.1 only, access log off.
"""
import argparse
import io
import json
import math
import os
import sys

import numpy as np
import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
import flowscore_torch  # noqa: E402

NPY_TYPES = ("application/x-npy", "application/npy")


class BadRequest(Exception):
    pass


def make_app(model_dir, inference="threadpool"):
    model = flowscore_torch.load(model_dir, dtype=torch.float32)
    dim = model.dim
    bpd_offset = dim * math.log(256)
    bpd_scale = 1.0 / (dim * math.log(2))

    def parse(body, content_type):
        if content_type.split(";")[0].strip().lower() in NPY_TYPES:
            try:
                x = np.load(io.BytesIO(body), allow_pickle=False)
            except Exception as e:  # noqa: BLE001 - any parse failure is the client's
                raise BadRequest(f"invalid NPY body: {e}") from None
            if x.dtype not in (np.float32, np.float64):
                raise BadRequest(f"NPY dtype must be float32 or float64, got {x.dtype}")
        else:
            try:
                doc = json.loads(body)
            except (ValueError, UnicodeDecodeError) as e:
                raise BadRequest(f"invalid JSON: {e}") from None
            if not isinstance(doc, dict) or "inputs" not in doc:
                raise BadRequest('expected a JSON object with "inputs"')
            try:
                x = np.asarray(doc["inputs"], dtype=np.float32)
            except (ValueError, TypeError) as e:
                raise BadRequest(f"inputs must be an array of rows of numbers: {e}") from None
        if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] != dim:
            raise BadRequest(f"inputs must be a non-empty [n, {dim}] array, got shape {list(x.shape)}")
        if not np.isfinite(x).all():
            raise BadRequest("inputs must be finite (no NaN/Inf)")
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))

    def score(body, content_type):
        try:
            x = parse(body, content_type)
            with torch.inference_mode():
                log_p = model(x).double()
        except BadRequest as e:
            return JSONResponse({"error": str(e)}, status_code=400)
        except ValueError as e:  # e.g. the logit preprocessing's [0, 1] check
            return JSONResponse({"error": str(e)}, status_code=400)
        bpd = (bpd_offset - log_p) * bpd_scale
        return JSONResponse({"log_prob": log_p.tolist(), "bits_per_dim": bpd.tolist()})

    app = FastAPI(title="flowscore PyTorch reference server")

    @app.post("/log_prob")
    async def log_prob(request: Request):
        body = await request.body()
        content_type = request.headers.get("content-type", "application/json")
        if inference == "inline":
            return score(body, content_type)
        return await run_in_threadpool(score, body, content_type)

    @app.get("/ready")
    @app.get("/health")
    async def ready():
        return {"status": "ok", "model": model.card.get("name")}

    return app


def main():
    p = argparse.ArgumentParser(description="PyTorch + FastAPI reference server for /log_prob")
    p.add_argument("--model", required=True, help="flowscore model folder")
    p.add_argument("--port", type=int, default=8081)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--inference", choices=("threadpool", "inline"), default="threadpool")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    app = make_app(args.model, args.inference)
    print(f"pytorch_server: model={args.model} threads={torch.get_num_threads()} "
          f"inference={args.inference} listening on http://{args.host}:{args.port}", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, workers=1, log_level="warning",
                access_log=False)


if __name__ == "__main__":
    main()
