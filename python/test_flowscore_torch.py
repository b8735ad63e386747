#!/usr/bin/env python3
"""Self-check of flowscore_torch.py: python python/test_flowscore_torch.py (no pytest needed).

Writes tiny random model folders (D=5, K=3 couplings, L=2 hidden layers x 7 units) for every
prior x preprocess kind and checks log p against an independent computation: a direct
transcription of docs/model-format.md over the raw safetensors arrays, differentiated with
torch.autograd.functional.jacobian, log|det J| by slogdet, plus the prior log-density.
"""
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import traceback

import numpy as np
import torch
from safetensors.numpy import load_file as load_numpy

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import flowscore_torch as ft  # noqa: E402

torch.set_num_threads(1)
D, K, L, H = 5, 3, 2, 7
TMP = tempfile.mkdtemp(prefix="flowscore_torch_test_")
TESTS = []


def test(fn):
    TESTS.append(fn)
    return fn


def fixture(prior, preprocess, seed=0):
    folder = os.path.join(TMP, f"{prior}-{preprocess}-{seed}")
    if not os.path.exists(os.path.join(folder, "card.json")):
        ft.save_random_model(folder, D, K, L, H, prior, preprocess, seed)
    return folder


def inputs(preprocess, n=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    if preprocess == "logit":   # logit needs [0, 1]; include the endpoints
        x = torch.rand(n, D, generator=g, dtype=torch.float64)
        x[0, 0], x[1, 1] = 0.0, 1.0
        return x
    return 2 * torch.randn(n, D, generator=g, dtype=torch.float64)


def reference_map(folder):
    """x (one row) -> z, written straight from docs/model-format.md, independent of flowscore_torch."""
    card = json.load(open(os.path.join(folder, "card.json")))
    w = {k: torch.from_numpy(v.astype(np.float64)) for k, v in
         load_numpy(os.path.join(folder, "model.safetensors")).items()}
    arch, pre = card["architecture"], card["preprocess"]
    dim = arch["dim"]

    def f(x):
        if pre["kind"] == "identity":
            h = x
        elif pre["kind"] == "standardize":
            h = (x - torch.tensor(pre["mean"], dtype=torch.float64)) / torch.tensor(pre["std"], dtype=torch.float64)
        elif pre["kind"] == "whiten":   # the inverse matrix, not a triangular solve
            u = (x - torch.tensor(pre["mean"], dtype=torch.float64)) / torch.tensor(pre["std"], dtype=torch.float64)
            h = torch.linalg.inv(torch.tensor(pre["cholesky"], dtype=torch.float64)) @ u
        else:
            u = pre["alpha"] + (1 - 2 * pre["alpha"]) * x
            h = torch.log(u) - torch.log(1 - u)
        h = [h[d] for d in range(dim)]
        for i in range(arch["couplings"]):
            keep = [d for d in range(dim) if d % 2 == i % 2]
            other = [d for d in range(dim) if d % 2 != i % 2]
            t = torch.stack([h[d] for d in keep])
            for j in range(arch["hidden_layers"] + 1):
                t = w[f"coupling.{i}.layer.{j}.weight"] @ t + w[f"coupling.{i}.layer.{j}.bias"]
                if j < arch["hidden_layers"]:
                    t = torch.clamp(t, min=0)
            for n, d in enumerate(other):
                h[d] = h[d] + t[n]
        return torch.exp(w["scale"]) * torch.stack(h)

    return f, card


def reference_log_prob(folder, x):
    f, card = reference_map(folder)
    out = []
    for row in x:
        z = f(row)
        _, logabsdet = torch.linalg.slogdet(torch.autograd.functional.jacobian(f, row))
        if card["prior"] == "logistic":
            prior = (torch.nn.functional.logsigmoid(z) + torch.nn.functional.logsigmoid(-z)).sum()
        else:
            prior = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum()
        out.append(prior + logabsdet)
    return torch.stack(out)


def make_test_vs_reference(prior, preprocess):
    def fn():
        folder = fixture(prior, preprocess)
        model = ft.load(folder)
        x = inputs(preprocess)
        lp = model(x)
        assert lp.dtype == torch.float64 and lp.shape == (len(x),)
        ref = reference_log_prob(folder, x)
        err = (lp - ref).abs().max().item()
        assert err < 1e-10, f"max |log p - reference| = {err:.3g}"
        f, _ = reference_map(folder)
        z, _ = model.encode(x)
        zerr = (z - torch.stack([f(r) for r in x])).abs().max().item()
        assert zerr < 1e-10, f"max |z - reference z| = {zerr:.3g}"
        back = model.decode(z)
        rerr = (back - x).abs().max().item()
        assert rerr < 1e-12, f"max |decode(encode(x)) - x| = {rerr:.3g}"
    fn.__name__ = f"test_log_prob_vs_jacobian_{prior}_{preprocess}"
    return fn


for _prior in ft.PRIORS:
    for _pre in ft.PREPROCESS_KINDS:
        test(make_test_vs_reference(_prior, _pre))


@test
def test_tensor_names_and_shapes():
    w = load_numpy(os.path.join(fixture("logistic", "identity"), "model.safetensors"))
    keep = {0: 3, 1: 2}   # D=5: even indices 0,2,4; odd 1,3
    expected = {"scale": (D,)}
    for i in range(K):
        k, o = keep[i % 2], D - keep[i % 2]
        sizes = [k] + [H] * L + [o]
        for j in range(L + 1):
            expected[f"coupling.{i}.layer.{j}.weight"] = (sizes[j + 1], sizes[j])
            expected[f"coupling.{i}.layer.{j}.bias"] = (sizes[j + 1],)
    assert {k: v.shape for k, v in w.items()} == expected
    assert all(v.dtype == np.float32 for v in w.values())


@test
def test_card_fields():
    card = json.load(open(os.path.join(fixture("gaussian", "standardize"), "card.json")))
    assert card["format_version"] == 1
    assert card["architecture"] == {"dim": D, "couplings": K, "hidden_layers": L, "hidden_units": H}
    assert card["prior"] == "gaussian" and card["preprocess"]["kind"] == "standardize"
    lps = card["calibration"]["log_probs"]
    assert lps == sorted(lps) and len(lps) == 200
    assert lps[0] <= card["calibration"]["threshold"] <= lps[-1]


@test
def test_float32_close_to_float64():
    folder = fixture("logistic", "logit")
    x = inputs("logit")
    lp64 = ft.load(folder)(x)
    lp32 = ft.load(folder, torch.float32)(x.float())
    assert lp32.dtype == torch.float32
    assert torch.allclose(lp32.double(), lp64, rtol=1e-4, atol=1e-3), (lp32 - lp64).abs().max()


@test
def test_logit_rejects_out_of_range():
    model = ft.load(fixture("logistic", "logit"))
    try:
        model(torch.full((1, D), 1.5, dtype=torch.float64))
    except ValueError:
        return
    raise AssertionError("no ValueError for inputs outside [0, 1]")


def _expect_value_error(folder, needle):
    try:
        ft.load(folder)
    except ValueError as e:
        assert needle in str(e), f"message {str(e)!r} lacks {needle!r}"
        return
    raise AssertionError("no ValueError")


@test
def test_rejects_bad_sha256():
    folder = os.path.join(TMP, "bad-sha")
    ft.save_random_model(folder, D, K, L, H, seed=3)
    path = os.path.join(folder, "model.safetensors")
    data = bytearray(open(path, "rb").read())
    data[-1] ^= 1   # flip one bit of the last weight
    open(path, "wb").write(bytes(data))
    _expect_value_error(folder, "sha256")


@test
def test_rejects_format_version():
    folder = os.path.join(TMP, "bad-version")
    ft.save_random_model(folder, D, K, L, H, seed=4)
    card_path = os.path.join(folder, "card.json")
    card = json.load(open(card_path))
    card["format_version"] = 2
    json.dump(card, open(card_path, "w"))
    _expect_value_error(folder, "format_version")


@test
def test_rejects_architecture_mismatch():
    folder = os.path.join(TMP, "bad-arch")
    ft.save_random_model(folder, D, K, L, H, seed=5)
    card_path = os.path.join(folder, "card.json")
    card = json.load(open(card_path))
    card["architecture"]["hidden_units"] = H + 1
    json.dump(card, open(card_path, "w"))
    _expect_value_error(folder, "architecture")


@test
def test_cli():
    folder = fixture("gaussian", "logit")
    x = inputs("logit", n=10).numpy().astype(np.float32)
    inp, out, bpd = (os.path.join(TMP, n) for n in ("in.npy", "out.npy", "bpd.npy"))
    np.save(inp, x)
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "flowscore_torch.py")
    for extra, path in (([], out), (["--bits-per-dim"], bpd)):
        subprocess.run([sys.executable, script, folder, inp, path] + extra, check=True)
    lp, b = np.load(out), np.load(bpd)
    assert lp.dtype == np.float64 and lp.shape == (10,)
    expected = ft.load(folder)(torch.from_numpy(x).double()).numpy()
    assert np.allclose(lp, expected, rtol=0, atol=1e-12)
    assert np.allclose(b, (-lp + D * math.log(256)) / (D * math.log(2)), rtol=0, atol=1e-12)
    np.save(inp, x[:, :3])
    r = subprocess.run([sys.executable, script, folder, inp, out], capture_output=True, text=True)
    assert r.returncode != 0 and "expected a 2-D" in r.stderr, r.stderr


def main():
    passed = failed = 0
    for fn in TESTS:
        try:
            fn()
            passed += 1
            print(f"ok   {fn.__name__}")
        except Exception:
            failed += 1
            print(f"FAIL {fn.__name__}")
            traceback.print_exc()
    print(f"{passed} passed, {failed} failed")
    if not failed:
        shutil.rmtree(TMP, ignore_errors=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
