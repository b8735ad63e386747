#!/usr/bin/env python3
"""Tabular anomaly detection: flowscore against IsolationForest, LOF, a one-class SVM and a
Gaussian mixture on the same splits and seeds (bench/anomaly_bench.sh runs it in .venv-bench).

Each task has a normal class: 70% of its rows train every detector, and the test set is the other
30% plus rows of the other classes (anomalies, at most as many as the normal test rows). Features
are standardised on the training rows for the baselines (flowscore standardises itself).
flowscore trains with `flowscore train` and its defaults (the recipe under test) and scores with
`flowscore eval`; the baselines are scikit-learn's with their usual settings (IsolationForest 200
trees; LOF novelty mode, 20 neighbours; OneClassSVM RBF, nu 0.1, gamma "scale"; a Gaussian mixture
of 1 to 4 full-covariance components chosen by BIC). Scores: higher is more anomalous. Prints a
Markdown table of AUROC per task (mean over seeds) and the mean per detector.

    .venv-bench/bin/python bench/anomaly_tabular.py --bin target/release/flowscore [--seeds 0,1,2]
        [--train-args "--epochs 200"]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
from sklearn import datasets
from sklearn.ensemble import IsolationForest
from sklearn.metrics import roc_auc_score
from sklearn.mixture import GaussianMixture
from sklearn.neighbors import LocalOutlierFactor
from sklearn.preprocessing import StandardScaler
from sklearn.svm import OneClassSVM


def tasks():
    """(name, X, y, normal label)."""
    out = []
    bc = datasets.load_breast_cancer()
    out.append(("breast cancer (benign normal)", bc.data, bc.target, 1))
    wine = datasets.load_wine()
    for c in range(3):
        out.append((f"wine (class {c} normal)", wine.data, wine.target, c))
    iris = datasets.load_iris()
    for c in range(3):
        out.append((f"iris (class {c} normal)", iris.data, iris.target, c))
    digits = datasets.load_digits()
    for c in (0, 1, 7):
        out.append((f"digits 8×8 (digit {c} normal)", digits.data, digits.target, c))
    # Synthetic: correlated Gaussian data; anomalies break the correlation in one random feature.
    rng = np.random.default_rng(12345)
    d, n = 10, 3000
    a = rng.normal(size=(d, d)) / np.sqrt(d)
    x = rng.normal(size=(n, d)) @ a.T
    odd = rng.normal(size=(300, d)) @ a.T
    cols = rng.integers(0, d, size=300)
    odd[np.arange(300), cols] += rng.choice([-1, 1], size=300) * 3 * x[:, cols].std(axis=0)
    out.append(("synthetic, one feature broken (D=10)", np.vstack([x, odd]), np.r_[np.zeros(n), np.ones(300)].astype(int), 0))
    return out


def split(X, y, normal, seed):
    rng = np.random.default_rng(seed)
    idx_n = rng.permutation(np.flatnonzero(y == normal))
    idx_a = rng.permutation(np.flatnonzero(y != normal))
    k = int(round(0.7 * len(idx_n)))
    train, test_n = idx_n[:k], idx_n[k:]
    test_a = idx_a[: len(test_n)]
    test = np.r_[test_n, test_a]
    labels = np.r_[np.zeros(len(test_n)), np.ones(len(test_a))].astype(int)
    return X[train], X[test], labels


def gmm(train, test, seed):
    best = None
    for k in range(1, 5):
        if k * 3 > len(train):
            break
        m = GaussianMixture(k, covariance_type="full", reg_covar=1e-3, random_state=seed).fit(train)
        bic = m.bic(train)
        if best is None or bic < best[0]:
            best = (bic, m)
    return -best[1].score_samples(test)


def baselines(train, test, seed):
    s = StandardScaler().fit(train)
    tr, te = s.transform(train), s.transform(test)
    return {
        "IsolationForest": -IsolationForest(n_estimators=200, random_state=seed).fit(tr).score_samples(te),
        "LOF": -LocalOutlierFactor(n_neighbors=min(20, len(tr) - 1), novelty=True).fit(tr).score_samples(te),
        "OneClassSVM": -OneClassSVM(nu=0.1, gamma="scale").fit(tr).score_samples(te),
        "GaussianMixture": gmm(tr, te, seed),
    }


def write_csv(path, X, labels=None):
    with open(path, "w") as f:
        cols = [f"x{i}" for i in range(X.shape[1])] + (["label"] if labels is not None else [])
        f.write(",".join(cols) + "\n")
        for i, row in enumerate(X):
            vals = [repr(float(v)) for v in row] + ([str(labels[i])] if labels is not None else [])
            f.write(",".join(vals) + "\n")


def flowscore(bin_, train, test, labels, seed, extra, work):
    tr, te, model = (os.path.join(work, n) for n in ("train.csv", "test.csv", "model"))
    write_csv(tr, train)
    write_csv(te, test, labels)
    cmd = [bin_, "--threads", "2", "train", "--data", tr, "--out", model, "--force", "--seed", str(seed)] + extra
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out = subprocess.run([bin_, "eval", "--model", model, "--data", te, "--label-column", "label"],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)["auroc"]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bin", default="target/release/flowscore")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--train-args", default="")
    a = p.parse_args()
    seeds = [int(s) for s in a.seeds.split(",")]
    extra = a.train_args.split()
    names = ["flowscore", "IsolationForest", "LOF", "OneClassSVM", "GaussianMixture"]
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for task, X, y, normal in tasks():
            per = {n: [] for n in names}
            for seed in seeds:
                train, test, labels = split(X, y, normal, seed)
                per["flowscore"].append(flowscore(a.bin, train, test, labels, seed, extra, work))
                for n, s in baselines(train, test, seed).items():
                    per[n].append(roc_auc_score(labels, s))
            rows.append((task, len(train), {n: float(np.mean(v)) for n, v in per.items()}))
            print(f"{task}: " + ", ".join(f"{n} {np.mean(v):.3f}" for n, v in per.items()), file=sys.stderr)
    print("| task | train rows | " + " | ".join(names) + " |")
    print("|---|---:|" + "---:|" * len(names))
    for task, n, r in rows:
        best = max(r.values())
        cells = [f"**{r[k]:.3f}**" if r[k] == best else f"{r[k]:.3f}" for k in names]
        print(f"| {task} | {n} | " + " | ".join(cells) + " |")
    means = {k: np.mean([r[k] for _, _, r in rows]) for k in names}
    print("| **mean AUROC** | | " + " | ".join(f"**{means[k]:.3f}**" if means[k] == max(means.values()) else f"{means[k]:.3f}" for k in names) + " |")


if __name__ == "__main__":
    main()
