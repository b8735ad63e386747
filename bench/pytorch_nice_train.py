#!/usr/bin/env python3
"""Plain-PyTorch NICE on Fashion-MNIST: the reference for flowscore's training benchmark.

What a Python user following the NICE paper (Dinh et al. 2014) would write: K=4 additive
couplings alternating odd/even coordinates (coupling i keeps the indices with parity i % 2, as in
docs/model-format.md), each with a ReLU MLP, a diagonal scaling initialised at 0, a logistic
prior, no preprocessing; data (pixel + U(0,1))/256 dequantised afresh each step; Adam(1e-3,
betas (0.9, 0.99), eps 1e-4). Test log-likelihood uses (pixel + 0.5)/256.

  python bench/pytorch_nice_train.py [--budget-seconds 900] [--eval-every-seconds 60]
      [--hidden-layers 5] [--hidden-units 1000] [--batch 256] [--threads 2] [--seed 0]
      [--device cpu] [--data-dir /usr/share/datasets/fashion-mnist]
  python bench/pytorch_nice_train.py --step-time-only 20      # prints step_ms_median=<ms>

Training prints `t=<s> epoch=<e> steps=<n> test_ll_nats=<x> test_bpd=<y>` at t=0, every
--eval-every-seconds of training time (evaluation time is not counted) and at the end, then one
JSON line with the whole curve. A training step = draw a batch + dequantise + forward + backward +
Adam update; an epoch is 60000 // batch steps over a fresh permutation (last partial batch dropped).
"""
import argparse
import gzip
import json
import math
import os
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

D = 784


def read_idx_images(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic, n, rows, cols = np.frombuffer(data[:16], dtype=">u4")
    assert magic == 2051, f"{path}: not an IDX image file"
    return np.frombuffer(data[16:], dtype=np.uint8).reshape(n, rows * cols)


class Coupling(torch.nn.Module):
    def __init__(self, i, hidden_layers, hidden_units):
        super().__init__()
        self.register_buffer("keep", torch.arange(i % 2, D, 2))
        self.register_buffer("other", torch.arange(1 - i % 2, D, 2))
        sizes = [len(self.keep)] + [hidden_units] * hidden_layers + [len(self.other)]
        layers = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
        self.mlp = torch.nn.Sequential(*layers[:-1])   # no ReLU after the last layer

    def forward(self, h):
        return h.index_copy(1, self.other, h[:, self.other] + self.mlp(h[:, self.keep]))


class NICE(torch.nn.Module):
    def __init__(self, couplings, hidden_layers, hidden_units):
        super().__init__()
        self.couplings = torch.nn.ModuleList(
            Coupling(i, hidden_layers, hidden_units) for i in range(couplings))
        self.scale = torch.nn.Parameter(torch.zeros(D))

    def forward(self, x):
        """log p(x) per row (nats)."""
        h = x
        for c in self.couplings:
            h = c(h)
        z = torch.exp(self.scale) * h
        log_prior = (-F.softplus(z) - F.softplus(-z)).sum(1)   # standard logistic
        return log_prior + self.scale.sum()


def bits_per_dim(ll):
    return (-ll + D * math.log(256)) / (D * math.log(2))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--budget-seconds", type=float, default=900)
    p.add_argument("--eval-every-seconds", type=float, default=60)
    p.add_argument("--couplings", type=int, default=4)
    p.add_argument("--hidden-layers", type=int, default=5)
    p.add_argument("--hidden-units", type=int, default=1000)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--step-time-only", type=int, metavar="N",
                   help="time N training steps (after 3 warm-up steps), print step_ms_median=<ms>")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    train = torch.from_numpy(read_idx_images(os.path.join(args.data_dir, "train-images-idx3-ubyte.gz")).copy()).to(dev)
    test = read_idx_images(os.path.join(args.data_dir, "t10k-images-idx3-ubyte.gz"))
    test = ((torch.from_numpy(test.astype(np.float32)) + 0.5) / 256).to(dev)

    model = NICE(args.couplings, args.hidden_layers, args.hidden_units).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.99), eps=1e-4)
    steps_per_epoch = len(train) // args.batch
    state = {"perm": None, "pos": steps_per_epoch, "steps": 0}

    def step():
        if state["pos"] == steps_per_epoch:
            state["perm"], state["pos"] = torch.randperm(len(train), device=dev), 0
        idx = state["perm"][state["pos"] * args.batch:(state["pos"] + 1) * args.batch]
        state["pos"] += 1
        pixels = train[idx].float()
        x = (pixels + torch.rand_like(pixels)) / 256
        loss = -model(x).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        state["steps"] += 1

    if args.step_time_only:
        for _ in range(3):
            step()
        times = []
        for _ in range(args.step_time_only):
            sync()
            t0 = time.perf_counter()
            step()
            sync()
            times.append(time.perf_counter() - t0)
        print(f"step_ms_median={statistics.median(times) * 1000:.3f}", flush=True)
        return

    def evaluate():
        model.eval()
        with torch.no_grad():
            ll = sum(model(test[i:i + 1000]).double().sum().item() for i in range(0, len(test), 1000))
        model.train()
        return ll / len(test)

    curve = []

    def record(t):
        ll = evaluate()
        point = {"t": round(t, 2), "epoch": round(state["steps"] / steps_per_epoch, 3),
                 "steps": state["steps"], "test_ll_nats": ll, "test_bpd": bits_per_dim(ll)}
        curve.append(point)
        print(f"t={point['t']:.1f} epoch={point['epoch']:.3f} steps={point['steps']} "
              f"test_ll_nats={ll:.2f} test_bpd={point['test_bpd']:.4f}", flush=True)

    record(0.0)
    trained = 0.0   # training wall-clock seconds, evaluation excluded
    next_eval = args.eval_every_seconds
    while trained < args.budget_seconds:
        t0 = time.perf_counter()
        step()
        sync()
        trained += time.perf_counter() - t0
        if trained >= next_eval and trained < args.budget_seconds:
            record(trained)
            next_eval += args.eval_every_seconds
    record(trained)
    n_params = sum(p.numel() for p in model.parameters())
    print(json.dumps({"framework": "pytorch", "torch": torch.__version__, "device": str(dev),
                      "threads": args.threads, "params": n_params, "config": vars(args),
                      "final_test_bpd": curve[-1]["test_bpd"], "curve": curve}), flush=True)


if __name__ == "__main__":
    main()
