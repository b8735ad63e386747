#!/usr/bin/env python3
"""Load a flowscore model folder into plain PyTorch.

A flowscore model folder (docs/model-format.md, format_version 1) holds `card.json` and
`model.safetensors`. This module needs only torch, numpy and safetensors:

    import flowscore_torch
    model = flowscore_torch.load("models/fashion-mnist/1")   # float64 by default
    log_p = model(x)                # x: [n, D] tensor -> log p(x): [n]
    z, log_det = model.encode(x)    # latent z and log|det dz/dx| per row
    x_back = model.decode(z)

Command line (writes float64 log p per row, or bits/dim with --bits-per-dim):

    python python/flowscore_torch.py MODEL_DIR INPUT.npy OUTPUT.npy [--bits-per-dim] [--float32]
"""
import argparse
import datetime
import hashlib
import json
import math
import os

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

FORMAT_VERSION = 1
PRIORS = ("logistic", "gaussian")
PREPROCESS_KINDS = ("identity", "standardize", "logit", "whiten")


class Coupling(torch.nn.Module):
    """Additive coupling i: h[:, other] += m(h[:, keep]); keep = indices with parity i % 2."""

    def __init__(self, i, dim, hidden_layers, hidden_units):
        super().__init__()
        keep = torch.arange(i % 2, dim, 2)
        other = torch.arange(1 - i % 2, dim, 2)
        self.register_buffer("keep", keep, persistent=False)
        self.register_buffer("other", other, persistent=False)
        sizes = [len(keep)] + [hidden_units] * hidden_layers + [len(other)]
        # Named `layer` so the state dict keys are coupling.{i}.layer.{j}.weight / .bias.
        self.layer = torch.nn.ModuleList(
            torch.nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))

    def shift(self, h):
        t = h[:, self.keep]
        for j, lin in enumerate(self.layer):
            t = lin(t)
            if j < len(self.layer) - 1:
                t = torch.relu(t)
        return t

    def forward(self, h):
        return h.index_copy(1, self.other, h[:, self.other] + self.shift(h))

    def inverse(self, h):
        return h.index_copy(1, self.other, h[:, self.other] - self.shift(h))


class NICE(torch.nn.Module):
    """NICE flow: x -> preprocess -> K additive couplings -> diagonal scaling -> z."""

    def __init__(self, dim, couplings, hidden_layers, hidden_units,
                 prior="logistic", preprocess=None):
        super().__init__()
        preprocess = dict(preprocess or {"kind": "identity"})
        if prior not in PRIORS:
            raise ValueError(f"unknown prior {prior!r} (expected one of {PRIORS})")
        kind = preprocess.get("kind")
        if kind not in PREPROCESS_KINDS:
            raise ValueError(f"unknown preprocess kind {kind!r} (expected one of {PREPROCESS_KINDS})")
        self.dim, self.prior, self.preprocess = dim, prior, preprocess
        self.coupling = torch.nn.ModuleList(
            Coupling(i, dim, hidden_layers, hidden_units) for i in range(couplings))
        self.scale = torch.nn.Parameter(torch.zeros(dim))
        if kind in ("standardize", "whiten"):
            mean, std = (torch.tensor(preprocess[k], dtype=torch.float64) for k in ("mean", "std"))
            if mean.shape != (dim,) or std.shape != (dim,):
                raise ValueError(f"{kind} mean/std must have length dim={dim}")
            if not bool((std > 0).all()):
                raise ValueError(f"{kind} std must be positive")
            self.register_buffer("pre_mean", mean, persistent=False)
            self.register_buffer("pre_std", std, persistent=False)
        if kind == "whiten":
            chol = torch.tensor(preprocess["cholesky"], dtype=torch.float64)
            if chol.shape != (dim, dim) or not bool((chol.triu(1) == 0).all()) or not bool((chol.diag() > 0).all()):
                raise ValueError(f"whiten cholesky must be {dim}x{dim} lower triangular with a positive diagonal")
            self.register_buffer("pre_chol", chol, persistent=False)
        elif kind == "logit":
            self.alpha = float(preprocess["alpha"])
            if not 0.0 <= self.alpha < 0.5:
                raise ValueError(f"logit alpha must lie in [0, 0.5), got {self.alpha}")

    # --- fixed preprocessing (part of the density) ---
    def pre(self, x):
        """h = pre(x) and log|det J_pre(x)| per row."""
        kind = self.preprocess["kind"]
        if kind == "identity":
            return x, x.new_zeros(x.shape[0])
        if kind == "standardize":
            return (x - self.pre_mean) / self.pre_std, -torch.log(self.pre_std).sum().expand(x.shape[0])
        if kind == "whiten":   # h = L^-1 (x - mean) / std, solved row by row as h L^T = u
            u = (x - self.pre_mean) / self.pre_std
            chol = self.pre_chol.to(u.dtype)
            h = torch.linalg.solve_triangular(chol, u.T, upper=False).T
            log_det = -torch.log(self.pre_std).sum() - torch.log(self.pre_chol.diag()).sum()
            return h, log_det.expand(x.shape[0])
        if bool(((x < 0) | (x > 1)).any()):
            raise ValueError("logit preprocessing needs inputs in [0, 1]")
        a = self.alpha
        u = a + (1 - 2 * a) * x
        log_u, log_1mu = torch.log(u), torch.log1p(-u)
        return log_u - log_1mu, (math.log(1 - 2 * a) - log_u - log_1mu).sum(1)

    def pre_inverse(self, h):
        kind = self.preprocess["kind"]
        if kind == "identity":
            return h
        if kind == "standardize":
            return h * self.pre_std + self.pre_mean
        if kind == "whiten":
            return (h @ self.pre_chol.to(h.dtype).T) * self.pre_std + self.pre_mean
        return (torch.sigmoid(h) - self.alpha) / (1 - 2 * self.alpha)

    # --- the flow ---
    def encode(self, x):
        """z and log|det dz/dx| per row."""
        h, log_det = self.pre(x)
        for c in self.coupling:
            h = c(h)
        return torch.exp(self.scale) * h, log_det + self.scale.sum()

    def decode(self, z):
        h = torch.exp(-self.scale) * z
        for c in reversed(self.coupling):
            h = c.inverse(h)
        return self.pre_inverse(h)

    def prior_log_prob(self, z):
        if self.prior == "logistic":
            return (-F.softplus(z) - F.softplus(-z)).sum(1)
        return (-0.5 * z * z - 0.5 * math.log(2 * math.pi)).sum(1)

    def forward(self, x):
        """log p(x) per row, in nats."""
        z, log_det = self.encode(x)
        return self.prior_log_prob(z) + log_det

    def bits_per_dim(self, log_p):
        """bits/dim for 8-bit data scaled as (pixel + 0.5) / 256."""
        return (-log_p + self.dim * math.log(256)) / (self.dim * math.log(2))


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load(folder, dtype=torch.float64):
    """Load a model folder (card.json + model.safetensors) as a NICE module in eval mode."""
    with open(os.path.join(folder, "card.json"), encoding="utf-8") as f:
        card = json.load(f)
    if card.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{folder}: unsupported format_version {card.get('format_version')!r} "
                         f"(this loader reads format_version {FORMAT_VERSION})")
    weights = card["weights"]
    path = os.path.join(folder, weights.get("file", "model.safetensors"))
    digest = _sha256(path)
    if digest != str(weights.get("sha256", "")).lower():
        raise ValueError(f"{path}: sha256 mismatch: card says {weights.get('sha256')}, "
                         f"file has {digest} (corrupt or edited weights)")
    arch = card["architecture"]
    model = NICE(arch["dim"], arch["couplings"], arch["hidden_layers"], arch["hidden_units"],
                 card["prior"], card["preprocess"])
    try:
        model.load_state_dict(load_file(path))
    except RuntimeError as e:
        raise ValueError(f"{path}: tensors do not match the card's architecture: {e}") from None
    model.card = card
    return model.to(dtype).eval().requires_grad_(False)


def save(model, folder, name="model", card_extra=None):
    """Write model as a flowscore model folder (float32 weights, sha256 in the card)."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "model.safetensors")
    save_file({k: v.detach().to(torch.float32).contiguous().cpu()
               for k, v in model.state_dict().items()}, path)
    layers = model.coupling[0].layer if len(model.coupling) else []
    card = {
        "format_version": FORMAT_VERSION,
        "name": name,
        "version": "1",
        "flowscore_version": "0.1.0",
        "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "architecture": {"dim": model.dim, "couplings": len(model.coupling),
                         "hidden_layers": len(layers) - 1, "hidden_units": layers[0].out_features},
        "prior": model.prior,
        "preprocess": model.preprocess,
        "input": {"shape": [model.dim], "eight_bit": False},
        "training": {},
        "weights": {"file": "model.safetensors", "sha256": _sha256(path)},
    }
    card.update(card_extra or {})
    with open(os.path.join(folder, "card.json"), "w", encoding="utf-8") as f:
        json.dump(card, f, indent=2)
    return card


def save_random_model(folder, dim=5, couplings=3, hidden_layers=2, hidden_units=7,
                      prior="logistic", preprocess="identity", seed=0):
    """Write a model folder with random weights (a test fixture); returns the card.

    preprocess: "identity", "standardize" (random mean/std), "whiten" (random mean/std and factor),
    "logit" (alpha 0.05), or a dict.
    The calibration block holds the sorted log p of 200 rows drawn U(0, 1), rounded to the
    float32 weights, so it is valid for every preprocess kind.
    """
    g = torch.Generator().manual_seed(seed)
    if isinstance(preprocess, str):
        preprocess = {"identity": {"kind": "identity"},
                      "logit": {"kind": "logit", "alpha": 0.05},
                      "standardize": {"kind": "standardize",
                                      "mean": (torch.randn(dim, generator=g)).tolist(),
                                      "std": (0.5 + torch.rand(dim, generator=g)).tolist()},
                      "whiten": {"kind": "whiten",
                                 "mean": (torch.randn(dim, generator=g)).tolist(),
                                 "std": (0.5 + torch.rand(dim, generator=g)).tolist(),
                                 "cholesky": (torch.randn(dim, dim, generator=g).tril(-1) * 0.3
                                              + torch.diag(0.5 + torch.rand(dim, generator=g))).tolist()},
                      }[preprocess]
    model = NICE(dim, couplings, hidden_layers, hidden_units, prior, preprocess)
    with torch.no_grad():
        model.scale.copy_(0.3 * torch.randn(dim, generator=g))
        for p in model.coupling.parameters():   # ~unit-scale layers: a clearly nonlinear map
            p.copy_(torch.randn(p.shape, generator=g) * (1.0 / math.sqrt(p.shape[-1])))
    card = save(model, folder, name=f"random-{dim}d-seed{seed}",
                card_extra={"training": {"note": "random weights from save_random_model, untrained",
                                         "seed": seed}})
    x = torch.rand(200, dim, generator=g, dtype=torch.float64)
    log_probs = sorted(load(folder)(x).tolist())
    q = 0.01
    card["calibration"] = {"log_probs": log_probs, "threshold_quantile": q,
                           "threshold": float(np.quantile(log_probs, q))}
    with open(os.path.join(folder, "card.json"), "w", encoding="utf-8") as f:
        json.dump(card, f, indent=2)
    return card


def main(argv=None):
    p = argparse.ArgumentParser(description="Score rows with a flowscore model in PyTorch: "
                                "writes log p(x) per row (float64, nats) as NPY.")
    p.add_argument("model_dir")
    p.add_argument("input", help="2-D NPY [n, D] of float32/float64 rows")
    p.add_argument("output", help="output NPY: float64 [n]")
    p.add_argument("--bits-per-dim", action="store_true",
                   help="write bits/dim, (-log p + D ln 256) / (D ln 2), instead of log p")
    p.add_argument("--float32", action="store_true", help="compute in float32 (default float64)")
    p.add_argument("--batch", type=int, default=4096, help="rows per forward pass")
    args = p.parse_args(argv)

    dtype = torch.float32 if args.float32 else torch.float64
    model = load(args.model_dir, dtype)
    x = np.load(args.input)
    if x.ndim != 2 or x.shape[1] != model.dim or x.dtype not in (np.float32, np.float64):
        raise SystemExit(f"error: {args.input}: expected a 2-D float32/float64 array [n, {model.dim}], "
                         f"got {x.dtype} {list(x.shape)}")
    with torch.no_grad():
        out = torch.cat([model(torch.from_numpy(x[i:i + args.batch]).to(dtype))
                         for i in range(0, len(x), args.batch)] or [torch.zeros(0, dtype=dtype)])
        if args.bits_per_dim:
            out = model.bits_per_dim(out)
    np.save(args.output, out.to(torch.float64).numpy())


if __name__ == "__main__":
    main()
