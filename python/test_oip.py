#!/usr/bin/env python3
"""Open Inference Protocol (KServe v2 REST) conformance of a running flowscore server, checked with
NVIDIA's own client, tritonclient[http] (scripts/setup-oip-client.sh installs it in .venv-oip):

    .venv-oip/bin/python python/test_oip.py --url 127.0.0.1:PORT --model NAME [--model NAME2 ...]

Server and model health and metadata; then, for each model, inference with FP32 and FP64 rows
(random, seeded, D read from the metadata) in the client's default binary mode and in JSON mode,
asking for the default outputs, for `log_prob`, for `latents` and for the other outputs. The values
must equal those of the flowscore routes /models/{name}/log_prob and /encode for the same rows
(FP64 rows are narrowed to float32 by the server, so the reference is the float32-rounded rows).
Also: unknown models and malformed requests raise InferenceServerException. No pytest needed:
prints one line per failure, a summary, and exits 1 on any failure.
"""

import argparse
import json
import sys
import traceback
import urllib.error
import urllib.request

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

OUTPUTS = {  # name: (datatype, shape with -1 for N and "D" for the row width)
    "log_prob": ("FP64", [-1]),
    "bits_per_dim": ("FP64", [-1]),
    "percentile": ("FP64", [-1]),
    "score": ("FP64", [-1]),
    "p_value": ("FP64", [-1]),
    "is_anomaly": ("BOOL", [-1]),
    "latents": ("FP32", [-1, "D"]),
}
NP_TYPES = {"FP32": np.float32, "FP64": np.float64}


class Checks:
    def __init__(self):
        self.passed = 0
        self.failed = []

    def run(self, name, fn, *args):
        try:
            fn(*args)
            self.passed += 1
        except Exception as e:  # noqa: BLE001 (a failed check, or the server or client failing: both count)
            detail = str(e) if isinstance(e, (AssertionError, InferenceServerException)) else traceback.format_exc()
            self.failed.append(name)
            print(f"FAIL {name}: {type(e).__name__}: {detail}", flush=True)


def post_json(base, path, body):
    req = urllib.request.Request(
        base + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        raise AssertionError(f"POST {path}: HTTP {e.code}: {e.read().decode(errors='replace')}") from None


def assert_close(got, want, rtol, what):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape}, expected {want.shape}"
    assert np.all(np.isfinite(got)), f"{what}: non-finite values {got}"
    err = np.abs(got.astype(np.float64) - want.astype(np.float64)) / np.maximum(1.0, np.abs(want.astype(np.float64)))
    i = int(np.argmax(err))
    assert err.flat[i] <= rtol, (
        f"{what}: element {tuple(int(k) for k in np.unravel_index(i, got.shape))} is {got.flat[i].item()!r}, "
        f"the reference is {want.flat[i].item()!r} "
        f"(relative difference {err.flat[i]:.3g} > {rtol})"
    )


class ModelCase:
    """One model: its metadata, its rows and the reference values from the flowscore routes."""

    def __init__(self, args, client, name):
        self.args, self.client, self.name = args, client, name
        self.base = f"http://{args.url}" if "://" not in args.url else args.url
        self.meta = None

    def check_ready(self):
        assert self.client.is_model_ready(self.name), f"is_model_ready({self.name!r}) is False"

    def check_metadata(self):
        m = self.client.get_model_metadata(self.name)
        assert m["name"] == self.name, f"metadata name {m['name']!r}, expected {self.name!r}"
        assert m.get("platform") == "flowscore_nice", f"platform {m.get('platform')!r}"
        assert isinstance(m.get("versions"), list) and m["versions"], f"versions {m.get('versions')!r}"
        assert len(m["inputs"]) == 1, f"inputs {m['inputs']}: expected exactly one"
        inp = m["inputs"][0]
        assert inp["name"] == "inputs" and inp["datatype"] == "FP32", f"input {inp}"
        shape = [int(s) for s in inp["shape"]]
        assert len(shape) == 2 and shape[0] == -1 and shape[1] >= 1, f"input shape {inp['shape']}, expected [-1, D]"
        d = shape[1]
        got = {o["name"]: (o["datatype"], [int(s) for s in o["shape"]]) for o in m["outputs"]}
        want = {k: (t, [d if s == "D" else s for s in sh]) for k, (t, sh) in OUTPUTS.items()}
        assert got == want, f"outputs {got}, expected {want}"
        self.meta = m
        self.d = d
        self.version = str(m["versions"][0])
        rng = np.random.default_rng(self.args.seed)
        # Inside [0.05, 0.95]: within the input range of every preprocessing (logit models refuse
        # values outside [0, 1]).
        self.x64 = rng.uniform(0.05, 0.95, size=(self.args.rows, d))
        self.x32 = self.x64.astype(np.float32)
        # References: the same float32 rows through the flowscore routes (JSON numbers that
        # round-trip float32 exactly).
        rows = self.x32.tolist()
        lp = post_json(self.base, f"/models/{self.name}/log_prob", {"inputs": rows})
        enc = post_json(self.base, f"/models/{self.name}/encode", {"inputs": rows})
        self.ref_lp = np.asarray(lp["log_prob"], dtype=np.float64)
        self.ref_bpd = np.asarray(lp["bits_per_dim"], dtype=np.float64)
        self.ref_latents = np.asarray(enc["latents"], dtype=np.float32)
        score = post_json(self.base, f"/models/{self.name}/score", {"inputs": rows, "kind": "likelihood"})
        self.ref_score = np.asarray(score["scores"], dtype=np.float64)
        self.ref_p = np.asarray(score["p_value"], dtype=np.float64)
        assert_close(np.asarray(enc["log_prob"]), self.ref_lp, self.args.rtol, "/encode log_prob vs /log_prob")
        assert self.ref_latents.shape == (self.args.rows, d), f"/encode latents shape {self.ref_latents.shape}"

    def check_versioned(self):
        assert self.client.is_model_ready(self.name, self.version), f"not ready as version {self.version!r}"
        m = self.client.get_model_metadata(self.name, self.version)
        assert m["name"] == self.name and m["inputs"] == self.meta["inputs"], f"versioned metadata {m}"
        r = self.infer("FP32", True, ["log_prob"], version=self.version)
        assert_close(r.as_numpy("log_prob"), self.ref_lp, self.args.rtol, "versioned log_prob")

    def infer(self, datatype, binary, outputs, version="", request_id="", parameters=None):
        x = self.x32 if datatype == "FP32" else self.x64
        inp = httpclient.InferInput("inputs", list(x.shape), datatype)
        inp.set_data_from_numpy(x, binary_data=binary)
        requested = None
        if outputs is not None:
            requested = [httpclient.InferRequestedOutput(o, binary_data=binary) for o in outputs]
        return self.client.infer(
            self.name, [inp], model_version=version, outputs=requested, request_id=request_id, parameters=parameters
        )

    def check_infer(self, datatype, binary, outputs):
        """One request; `outputs` None = the server's default (log_prob only)."""
        request_id = f"{self.name}-{datatype}-{'bin' if binary else 'json'}-{'+'.join(outputs or ['default'])}"
        threshold = float(np.median(self.ref_lp))
        params = {"threshold": threshold} if outputs and "is_anomaly" in outputs else None
        r = self.infer(datatype, binary, outputs, request_id=request_id, parameters=params)
        resp = r.get_response()
        assert resp.get("model_name") == self.name, f"model_name {resp.get('model_name')!r}"
        assert resp.get("id") == request_id, f"id {resp.get('id')!r}, expected {request_id!r}"
        names = [o["name"] for o in resp["outputs"]]
        want_names = outputs or ["log_prob"]
        assert names == want_names, f"outputs {names}, expected {want_names}"
        n = self.args.rows
        for o in resp["outputs"]:
            dt, shape = OUTPUTS[o["name"]]
            shape = [n if s == -1 else self.d if s == "D" else s for s in shape]
            assert o["datatype"] == dt and [int(s) for s in o["shape"]] == shape, f"output {o}"
            # Without `outputs` the client asks for binary (binary_data_output); else as requested.
            want_binary = binary or outputs is None
            is_binary = "binary_data_size" in (o.get("parameters") or {})
            assert is_binary == want_binary, (
                f"output {o['name']} came back {'binary' if is_binary else 'as JSON'}, expected "
                f"{'binary' if want_binary else 'JSON'}: {o}"
            )
            assert is_binary != ("data" in o), f"output {o['name']} must have exactly one of data or binary data"
            value = r.as_numpy(o["name"])
            got_shape = None if value is None else list(value.shape)
            assert got_shape == shape, f"{o['name']}: decoded shape {got_shape}, expected {shape}"
            what = f"{o['name']} ({datatype} rows, {'binary' if binary else 'JSON'})"
            if o["name"] == "log_prob":
                assert value.dtype == np.float64, f"{what}: dtype {value.dtype}"
                assert_close(value, self.ref_lp, self.args.rtol, what)
            elif o["name"] == "bits_per_dim":
                assert_close(value, self.ref_bpd, self.args.rtol, what)
            elif o["name"] == "latents":
                assert value.dtype == np.float32, f"{what}: dtype {value.dtype}"
                assert_close(value, self.ref_latents, self.args.rtol, what)
            elif o["name"] == "score":
                assert_close(value, self.ref_score, self.args.rtol, what)
            elif o["name"] == "p_value":
                assert_close(value, self.ref_p, self.args.rtol, what)
            elif o["name"] == "is_anomaly":
                assert value.dtype == np.bool_, f"{what}: dtype {value.dtype}"
                want = self.ref_lp < threshold
                assert np.array_equal(value, want), f"{what}: {value.tolist()}, expected {want.tolist()}"

    def check_bad_requests(self):
        # Rows of the wrong width, and an integer datatype: 400 with a message.
        for label, x, dt in [
            ("rows of width D+1", np.zeros((2, self.d + 1), np.float32), "FP32"),
            ("INT32 rows", np.zeros((2, self.d), np.int32), "INT32"),
        ]:
            inp = httpclient.InferInput("inputs", list(x.shape), dt)
            inp.set_data_from_numpy(x)
            try:
                self.client.infer(self.name, [inp])
            except InferenceServerException as e:
                assert e.status() == "400", f"{label}: HTTP {e.status()}, expected 400 ({e.message()})"
                assert e.message(), f"{label}: an empty error message"
            else:
                raise AssertionError(f"{label}: the server accepted it")
        try:
            self.infer("FP32", True, ["no_such_output"])
        except InferenceServerException as e:
            assert e.status() == "400", f"unknown output: HTTP {e.status()}, expected 400"
        else:
            raise AssertionError("an unknown output name was accepted")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True, help="host:port of the flowscore server")
    p.add_argument("--model", action="append", required=True, help="a model name (repeatable)")
    p.add_argument("--rows", type=int, default=16, help="rows per request [16]")
    p.add_argument("--seed", type=int, default=0, help="seed of the random rows [0]")
    p.add_argument("--rtol", type=float, default=1e-9, help="relative tolerance against the references [1e-9]")
    args = p.parse_args()
    url = args.url.split("://", 1)[-1]
    client = httpclient.InferenceServerClient(url=url, network_timeout=60.0)
    checks = Checks()

    def server():
        assert client.is_server_live(), "is_server_live() is False"
        assert client.is_server_ready(), "is_server_ready() is False"
        m = client.get_server_metadata()
        assert m.get("name") == "flowscore", f"server name {m.get('name')!r}"
        assert isinstance(m.get("version"), str) and m["version"], f"server version {m.get('version')!r}"
        missing = {"binary_tensor_data", "model_repository"} - set(m.get("extensions", []))
        assert not missing, f"extensions {m.get('extensions')} lack {sorted(missing)}"

    def unknown_model():
        name = "no-such-model-oip-test"
        assert not client.is_model_ready(name), "is_model_ready is True for an unknown model"
        for call in (lambda: client.get_model_metadata(name), lambda: client.infer(name, [unknown_input()])):
            try:
                call()
            except InferenceServerException as e:
                assert e.status() == "404", f"HTTP {e.status()} for an unknown model, expected 404 ({e.message()})"
            else:
                raise AssertionError("no InferenceServerException for an unknown model")

    def unknown_input():
        inp = httpclient.InferInput("inputs", [1, 2], "FP32")
        inp.set_data_from_numpy(np.zeros((1, 2), np.float32))
        return inp

    checks.run("server health and metadata", server)
    checks.run("unknown model", unknown_model)
    for name in args.model:
        case = ModelCase(args, client, name)
        checks.run(f"{name}: ready", case.check_ready)
        checks.run(f"{name}: metadata and references", case.check_metadata)
        if case.meta is None:
            continue
        checks.run(f"{name}: versioned routes", case.check_versioned)
        for datatype in ("FP32", "FP64"):
            for binary in (True, False):
                for outputs in (None, ["log_prob"], ["latents"],
                                ["log_prob", "latents", "bits_per_dim", "is_anomaly", "score", "p_value"]):
                    mode = "binary" if binary else "JSON"
                    label = f"{name}: infer {datatype} {mode} outputs={','.join(outputs or ['default'])}"
                    checks.run(label, case.check_infer, datatype, binary, outputs)
        checks.run(f"{name}: bad requests", case.check_bad_requests)
    client.close()
    print(f"oip: {checks.passed} passed, {len(checks.failed)} failed")
    sys.exit(1 if checks.failed else 0)


if __name__ == "__main__":
    main()
