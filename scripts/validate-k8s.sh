#!/usr/bin/env bash
# Offline validation of the Kubernetes manifests (deploy/kubernetes, docs/kubernetes.md).
#
#   scripts/validate-k8s.sh               # render, validate, check the checks; exit 1 on any failure
#   scripts/validate-k8s.sh --no-kubectl  # render with the built-in renderer only
#
# 1. Installs kubernetes-validate (pinned, with its dependencies) into .venv-k8s (git-ignored).
#    Idempotent: a venv with the pinned versions is left alone, so later runs need no network;
#    kubernetes-validate ships the Kubernetes JSON schemas it validates against.
# 2. Renders the kustomization. With `kubectl` on PATH, `kubectl kustomize` (kustomize itself,
#    what `kubectl apply -k` sends); always also a small built-in renderer (resources, labels,
#    images: the only kustomization fields the base uses; any other field is an error), whose
#    output must equal kubectl's object for object. Without kubectl the built-in one is used.
# 3. Validates every rendered object, plus the prometheus-adapter example ConfigMap (not in the
#    kustomization), against the schemas of each pinned Kubernetes version in strict mode: an
#    unknown or misspelled field is an error, and so is a kind the schemas do not know (where
#    kubernetes-validate's own CLI only warns). One line per object.
# 4. Cross-object checks the schemas cannot make: selectors match pod labels, Service target
#    ports, probe ports, claims and the HPA's target exist, the HPA's metric has an adapter rule,
#    every container is non-root with a read-only root filesystem, no object names a namespace.
# 5. Checks that the checks bite: a copy of the scorer Deployment with a misspelled field,
#    written to a temporary folder, an unknown kind, and a Service whose selector matches no pod
#    must each be rejected.
# No cluster is contacted: this is schema and consistency checking, not a deployment test.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
venv=.venv-k8s
# The Kubernetes versions whose schemas every object must pass: the oldest kubernetes-validate
# ships and the newest. Every API used here (apps/v1, policy/v1, autoscaling/v2) is GA in both.
K8S_VERSIONS="1.25.0 1.37.0"
# kubernetes-validate and everything it pulls in, pinned (as pip resolved them in December 2026).
PINS=(kubernetes-validate==1.37.0 jsonschema==4.26.0 jsonschema-specifications==2025.9.1
  referencing==0.37.0 rpds-py==2026.9.1 attrs==26.1.0 importlib_resources==7.1.0
  packaging==26.4 PyYAML==6.0.4 typing_extensions==4.16.0)
stamp=$venv/.flowscore-ready # written last
recipe="${PINS[*]}"

works() {
  "$venv/bin/python" - "$K8S_VERSIONS" <<'PY'
import sys
import kubernetes_validate.utils as utils
import yaml  # noqa: F401
for v in sys.argv[1].split():
    assert utils.major_minor(v) in [utils.major_minor(s) for s in utils.all_versions()], v
PY
}
if [ "$(cat "$stamp" 2>/dev/null)" = "$recipe" ] && works 2>/dev/null; then
  echo "k8s validation venv ready ($venv)"
else
  rm -rf "$venv"
  "$PYTHON" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check "${PINS[@]}"
  works
  echo "$recipe" >"$stamp"
  echo "k8s validation venv installed ($venv, $(du -sh "$venv" | cut -f1))"
fi

exec "$venv/bin/python" - "$K8S_VERSIONS" "$@" <<'PY'
"""Renders deploy/kubernetes, validates every object, cross-checks them, checks the checks."""
import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile

import yaml
import kubernetes_validate.utils as kv
from kubernetes_validate.version import __version__ as KV_VERSION

BASE = "deploy/kubernetes"
EXTRA = ["deploy/kubernetes/prometheus-adapter/rules.yaml"]  # validated, not in the kustomization
IMAGE = "flowscore:latest"  # what the base renders to
VERSIONS = sys.argv[1].split()
USE_KUBECTL = "--no-kubectl" not in sys.argv[2:]
failures = []


def fail(msg):
    failures.append(msg)
    print(f"FAIL {msg}")


def key(obj):
    return f"{obj.get('kind')}/{(obj.get('metadata') or {}).get('name')}"


def load_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


# ---- rendering -------------------------------------------------------------------------------

def split_image(image):
    """'repo/name:tag@sha256:...' -> (name, tag, digest)."""
    name, _, digest = image.partition("@")
    tag = ""
    if ":" in name.rsplit("/", 1)[-1]:
        name, tag = name.rsplit(":", 1)
    return name, tag, digest


def pod_specs(obj):
    spec = obj.get("spec") or {}
    if obj.get("kind") == "Pod":
        yield spec
    elif "template" in spec:
        yield spec["template"].get("spec") or {}
    elif "jobTemplate" in spec:
        yield spec["jobTemplate"]["spec"]["template"].get("spec") or {}


def containers(obj):
    for spec in pod_specs(obj):
        for field in ("initContainers", "containers"):
            for c in spec.get(field) or []:
                yield field, c


def render_builtin(base):
    """The subset of kustomize that the base uses: resources (files), labels, images."""
    with open(os.path.join(base, "kustomization.yaml")) as f:
        k = yaml.safe_load(f)
    unsupported = set(k) - {"apiVersion", "kind", "resources", "labels", "images"}
    if unsupported:
        raise SystemExit(f"the built-in renderer does not support {sorted(unsupported)}: use kubectl kustomize")
    objects = []
    for res in k.get("resources") or []:
        path = os.path.join(base, res)
        if not os.path.isfile(path):
            raise SystemExit(f"{path}: the built-in renderer takes files only")
        objects += load_docs(path)
    for entry in k.get("labels") or []:
        if entry.get("includeSelectors") or entry.get("includeTemplates") or entry.get("fields"):
            raise SystemExit("the built-in renderer supports only plain `labels` pairs")
        for obj in objects:
            obj.setdefault("metadata", {}).setdefault("labels", {}).update(entry["pairs"])
    for img in k.get("images") or []:
        for obj in objects:
            for _, c in containers(obj):
                name, tag, digest = split_image(c["image"])
                if name != img["name"]:
                    continue
                name = img.get("newName", name)
                tag = img.get("newTag", tag)
                digest = img.get("digest", digest)
                c["image"] = name + (f":{tag}" if tag and not digest else "") + (f"@{digest}" if digest else "")
    return objects


def render_kubectl(base):
    out = subprocess.run(["kubectl", "kustomize", base], capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise SystemExit(f"kubectl kustomize {base} failed:\n{out.stderr}")
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def render(base):
    builtin = render_builtin(base)
    if not (USE_KUBECTL and shutil.which("kubectl")):
        print(f"rendered {base} with the built-in renderer ({len(builtin)} objects; no kubectl)")
        return builtin
    version = subprocess.run(["kubectl", "version", "--client"], capture_output=True, text=True).stdout
    kustomize = next((l.split(":", 1)[1].strip() for l in version.splitlines() if "Kustomize" in l), "?")
    rendered = render_kubectl(base)
    print(f"rendered {base} with kubectl kustomize (kustomize {kustomize}, {len(rendered)} objects)")
    a = {key(o): o for o in rendered}
    b = {key(o): o for o in builtin}
    if len(a) != len(rendered) or len(b) != len(builtin):
        fail("two objects share a kind and name")
    if set(a) != set(b):
        fail(f"kubectl and the built-in renderer disagree on the objects: {sorted(set(a) ^ set(b))}")
    for k in sorted(set(a) & set(b)):
        if json.dumps(a[k], sort_keys=True) != json.dumps(b[k], sort_keys=True):
            fail(f"{k}: kubectl kustomize and the built-in renderer render it differently")
    return rendered


# ---- schema validation -----------------------------------------------------------------------

def schema_errors(obj):
    """Strict validation against each pinned version; a kind without a schema is an error."""
    errors = []
    for version in VERSIONS:
        try:
            kv.validate(obj, version, strict=True)
        except kv.ValidationError as e:
            path = ".".join(str(p) for p in e.path) or "(top)"
            errors.append(f"Kubernetes {kv.major_minor(version)}: {path}: {e.message}")
        except kv.SchemaNotFoundError as e:
            errors.append(e.message)
        except (kv.VersionNotSupportedError, kv.InvalidSchemaError) as e:
            errors.append(getattr(e, "message", str(e)))
    return errors


def validate_all(objects, source):
    for obj in objects:
        errors = schema_errors(obj)
        where = f"{source}: {key(obj)}"
        if errors:
            for e in errors:
                fail(f"{where}: {e}")
        else:
            print(f"ok   {where} (strict schema, Kubernetes {', '.join(kv.major_minor(v) for v in VERSIONS)})")


# ---- cross-object checks ---------------------------------------------------------------------

def matches(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def cross_errors(objects, adapter_objects):
    errors = []
    by_kind = {}
    for o in objects:
        by_kind.setdefault(o["kind"], []).append(o)
    deployments = by_kind.get("Deployment", [])
    claims = {o["metadata"]["name"] for o in by_kind.get("PersistentVolumeClaim", [])}

    def pod_labels(d):
        return d["spec"]["template"]["metadata"].get("labels") or {}

    def port_names(d):
        return {p.get("name") for _, c in containers(d) for p in c.get("ports") or []}

    for o in objects:
        if "namespace" in o.get("metadata", {}):
            errors.append(f"{key(o)}: names a namespace (the base is namespace-agnostic)")
        if o["kind"] == "Secret":
            errors.append(f"{key(o)}: no Secret belongs in the base (the admin token is made by hand)")
    for d in deployments:
        sel = d["spec"]["selector"].get("matchLabels") or {}
        if not matches(sel, pod_labels(d)):
            errors.append(f"{key(d)}: selector {sel} does not match its pod labels")
        spec = d["spec"]["template"]["spec"]
        mounted = {v["name"] for _, c in containers(d) for v in c.get("volumeMounts") or []}
        for v in spec.get("volumes") or []:
            if "persistentVolumeClaim" in v and v["persistentVolumeClaim"]["claimName"] not in claims:
                errors.append(f"{key(d)}: volume {v['name']} claims a missing PVC {v['persistentVolumeClaim']['claimName']}")
            if v["name"] not in mounted:
                errors.append(f"{key(d)}: volume {v['name']} is never mounted")
        names = {v["name"] for v in spec.get("volumes") or []}
        pod_sc = spec.get("securityContext") or {}
        if not pod_sc.get("runAsNonRoot") or pod_sc.get("runAsUser") != 10001:
            errors.append(f"{key(d)}: the pod must run as non-root uid 10001")
        for field, c in containers(d):
            where = f"{key(d)} {field} {c['name']}"
            if c["image"] != IMAGE:
                errors.append(f"{where}: image {c['image']}, expected {IMAGE}")
            sc = c.get("securityContext") or {}
            if (sc.get("allowPrivilegeEscalation") is not False or sc.get("readOnlyRootFilesystem") is not True
                    or (sc.get("capabilities") or {}).get("drop") != ["ALL"]):
                errors.append(f"{where}: needs allowPrivilegeEscalation false, readOnlyRootFilesystem, drop ALL")
            mounts = c.get("volumeMounts") or []
            if field == "containers" and not any(m.get("mountPath") == "/tmp" for m in mounts):
                errors.append(f"{where}: no writable /tmp under its read-only root filesystem")
            for m in mounts:
                if m["name"] not in names:
                    errors.append(f"{where}: mounts a missing volume {m['name']}")
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                port = ((c.get(probe) or {}).get("httpGet") or {}).get("port")
                if isinstance(port, str) and port not in {p.get("name") for p in c.get("ports") or []}:
                    errors.append(f"{where}: {probe} names a missing port {port}")
            for e in c.get("env") or []:
                ref = (e.get("valueFrom") or {}).get("secretKeyRef")
                if ref and ref.get("optional") is not True:
                    errors.append(f"{where}: secret {ref['name']} must be optional")
    for kind in ("Service", "PodDisruptionBudget"):
        for o in by_kind.get(kind, []):
            sel = o["spec"]["selector"] if kind == "Service" else o["spec"]["selector"].get("matchLabels")
            hits = [d for d in deployments if matches(sel, pod_labels(d))]
            if len(hits) != 1:
                errors.append(f"{key(o)}: selector {sel} matches {len(hits)} Deployments' pods, not 1")
                continue
            if kind == "Service":
                for p in o["spec"]["ports"]:
                    tp = p.get("targetPort")
                    if isinstance(tp, str) and tp not in port_names(hits[0]):
                        errors.append(f"{key(o)}: targetPort {tp} is no port of {key(hits[0])}")
    served = set()
    for cm in adapter_objects:
        config = yaml.safe_load(cm["data"]["config.yaml"])
        for rule in config.get("rules") or []:
            missing = {"seriesQuery", "resources", "name", "metricsQuery"} - set(rule)
            if missing:
                errors.append(f"{key(cm)}: an adapter rule lacks {sorted(missing)}")
            served.add((rule.get("name") or {}).get("as"))
    for h in by_kind.get("HorizontalPodAutoscaler", []):
        ref = h["spec"]["scaleTargetRef"]
        if ref["kind"] != "Deployment" or ref["name"] not in {d["metadata"]["name"] for d in deployments}:
            errors.append(f"{key(h)}: scales a missing {ref['kind']}/{ref['name']}")
        for m in h["spec"].get("metrics") or []:
            if m["type"] == "Pods" and m["pods"]["metric"]["name"] not in served:
                errors.append(f"{key(h)}: no prometheus-adapter rule serves {m['pods']['metric']['name']}")
    return errors


# ---- main ------------------------------------------------------------------------------------

print(f"kubernetes-validate {KV_VERSION}; schemas of Kubernetes {', '.join(VERSIONS)}")
objects = render(BASE)
validate_all(objects, BASE)
adapter = []
for path in EXTRA:
    docs = load_docs(path)
    validate_all(docs, path)
    adapter += [d for d in docs if d.get("kind") == "ConfigMap"]
errors = cross_errors(objects, adapter)
for e in errors:
    fail(e)
if not errors:
    print(f"ok   cross-object checks ({len(objects)} objects and {len(adapter)} adapter rule ConfigMap)")

# The checks must reject what they exist to reject.
scorer = next(o for o in objects if key(o) == "Deployment/flowscore-scorer")
with tempfile.TemporaryDirectory() as tmp:
    broken = copy.deepcopy(scorer)
    c = broken["spec"]["template"]["spec"]["containers"][0]
    c["readinesProbe"] = c.pop("readinessProbe")  # misspelled
    path = os.path.join(tmp, "scorer-deployment-broken.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(broken, f)
    errs = schema_errors(load_docs(path)[0])
    if errs and all("readinesProbe" in e for e in errs):
        print(f"ok   rejected as expected: a scorer Deployment with `readinesProbe` ({errs[0]})")
    else:
        fail(f"a scorer Deployment with a misspelled field was not rejected as such: {errs}")
unknown = {"apiVersion": "apps/v1", "kind": "Deploymnet", "metadata": {"name": "x"}, "spec": {}}
errs = schema_errors(unknown)
if errs:
    print(f"ok   rejected as expected: an unknown kind ({errs[0]})")
else:
    fail("an object of an unknown kind passed validation")
stray = copy.deepcopy(objects)
for o in stray:
    if key(o) == "Service/flowscore":
        o["spec"]["selector"]["app.kubernetes.io/component"] = "scorers"
errs = cross_errors(stray, adapter)
if any(e.startswith("Service/flowscore:") for e in errs):
    print("ok   rejected as expected: a Service whose selector matches no pod")
else:
    fail(f"a Service whose selector matches no pod passed the cross-object checks: {errs}")

if failures:
    print(f"validate-k8s: {len(failures)} failure(s)")
    sys.exit(1)
print(f"validate-k8s: all {len(objects) + len(adapter)} objects valid")
PY
