"""Spectrum diagnostics of a feature set: is a selection's feature space collapsed?

DiSF (Fan et al., ICLR 2025) diagnoses "dimensional collapse" by the eigenvalues of the
standardised correlation matrix of the selected files' features: a few dominant eigenvalues
mean the selection covers few directions. Two summaries:

- dominance score: share of the top-k eigenvalues in the total (trace = number of
  non-constant dimensions); lower is more diverse.
- effective rank (Roy & Vetterli 2007): exp(H(p)) with p = λ / Σλ; d for a flat spectrum,
  1 for rank one; higher is more diverse.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from data_select.io import publish


class SpectrumError(ValueError):
    """Input the diagnostics cannot use; the message names the argument."""


def correlation_eigenvalues(features: np.ndarray, *, sample: int = 10_000, seed: int = 0) -> np.ndarray:
    """Eigenvalues (descending, ≥ 0) of the correlation matrix of up to ``sample`` random rows.

    Dimensions constant over the sample have no correlation; they contribute a zero eigenvalue
    (z-score defined as 0, the same convention as :mod:`data_select.disf`).
    """
    if getattr(features, "ndim", None) != 2:
        raise SpectrumError(f"features must be a 2-D (files, dims) array, got shape {getattr(features, 'shape', None)}")
    n = features.shape[0]
    if n < 2:
        raise SpectrumError(f"need at least 2 rows for a correlation matrix, got {n}")
    rows = np.sort(np.random.default_rng(seed).choice(n, size=min(sample, n), replace=False))
    x = np.asarray(features[rows], dtype=np.float64)
    if not np.isfinite(x).all():
        raise SpectrumError(f"features hold NaN/inf at row {int(rows[np.argmax(~np.isfinite(x).all(axis=1))])}")
    const = x.max(axis=0) == x.min(axis=0)
    sd = x.std(axis=0, ddof=1)
    sd[const] = 1.0
    z = (x - x.mean(axis=0)) / sd
    z[:, const] = 0.0
    corr = z.T @ z / (len(x) - 1)
    eigs = np.linalg.eigvalsh(corr)[::-1]
    return np.clip(eigs, 0.0, None)


def _positive(eigs: np.ndarray) -> np.ndarray:
    e = np.clip(np.asarray(eigs, dtype=np.float64).ravel(), 0.0, None)
    if e.sum() <= 0:
        raise SpectrumError("eigenvalues sum to zero: every dimension is constant")
    return e


def dominance_score(eigs: np.ndarray, top_k: int = 10) -> float:
    """Share of the ``top_k`` largest eigenvalues in their total."""
    e = np.sort(_positive(eigs))[::-1]
    if top_k < 1:
        raise SpectrumError(f"top_k must be >= 1, got {top_k}")
    return float(e[:top_k].sum() / e.sum())


def effective_rank(eigs: np.ndarray) -> float:
    """exp of the Shannon entropy of the normalised eigenvalues (Roy & Vetterli 2007)."""
    e = _positive(eigs)
    p = e[e > 0] / e.sum()
    return float(np.exp(-(p * np.log(p)).sum()))


def compare(features: np.ndarray, selected_idx: np.ndarray, *, seed: int = 0, top_k: int = 10,
            sample: int = 10_000) -> dict:
    """Dominance and effective rank of the selection, the whole pool, and a random selection
    of the same size (the baseline a selection must beat)."""
    selected_idx = np.asarray(selected_idx, dtype=np.int64)
    n = features.shape[0]
    if selected_idx.size < 2:
        raise SpectrumError(f"selection has {selected_idx.size} row(s); need at least 2")
    if selected_idx.min() < 0 or selected_idx.max() >= n:
        raise SpectrumError(f"selected_idx must lie in [0, {n})")
    random_idx = np.sort(np.random.default_rng(seed).choice(n, size=selected_idx.size, replace=False))
    out = {}
    for name, rows in (("selected", selected_idx), ("pool", None), ("random", random_idx)):
        sub = features if rows is None else np.asarray(features[np.sort(rows)])
        eigs = correlation_eigenvalues(sub, sample=sample, seed=seed)
        out[name] = {"files": int(sub.shape[0]), "dominance": dominance_score(eigs, top_k),
                     "effective_rank": effective_rank(eigs)}
    out["top_k"] = top_k
    return out


def plot_spectra(named_eigs: dict[str, np.ndarray], out_png: str | os.PathLike) -> None:
    """Normalised eigenvalue spectra (λ / Σλ by rank, log scale) on one figure, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not named_eigs:
        raise SpectrumError("plot_spectra needs at least one named spectrum")
    out_png = Path(out_png)
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, eigs in named_eigs.items():
        e = np.sort(_positive(eigs))[::-1]
        # a sample of n files has at most n - 1 non-zero eigenvalues; round-off ones would fill the plot
        e = e[e > e[0] * 1e-8] / e.sum()
        ax.plot(np.arange(1, len(e) + 1), e, label=f"{name} (eff. rank {effective_rank(e):.1f})")
    ax.set_yscale("log")
    ax.set_xlabel("eigenvalue rank")
    ax.set_ylabel("λ / Σλ")
    ax.set_title("Correlation spectrum of features")
    ax.legend()
    _save_figure(fig, out_png)


def plot_domains(domains: dict[str, dict[str, int]], out_png: str | os.PathLike, *, title: str = "") -> None:
    """Per-domain bars, selection vs pool: each domain's share of the selected files beside its share
    of the pool (a selection that follows the pool has equal bars), with the file counts on top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted(domains, key=lambda d: -domains[d]["pool"])
    pool = np.array([domains[d]["pool"] for d in names], dtype=np.float64)
    sel = np.array([domains[d]["selected"] for d in names], dtype=np.float64)
    if not names or pool.sum() <= 0 or sel.sum() <= 0:
        raise SpectrumError("plot_domains needs at least one domain with pool and selected files")
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(names) + 2), 4))
    for offset, counts, label, color in ((-0.2, pool, "pool", "0.65"), (0.2, sel, "selection", "C0")):
        bars = ax.bar(x + offset, 100 * counts / counts.sum(), 0.4, label=f"{label} ({int(counts.sum()):,} files)",
                      color=color)
        ax.bar_label(bars, labels=[f"{int(c):,}" for c in counts], fontsize=7, padding=1)
    ax.set_xticks(x, names, rotation=30 if len(names) > 6 else 0, ha="right" if len(names) > 6 else "center")
    ax.set_ylabel("share of files (%)")
    ax.set_title(title or "Files per domain: selection vs pool (counts on the bars)")
    ax.legend()
    ax.margins(y=0.12)
    _save_figure(fig, out_png)


def _save_figure(fig, out_png: str | os.PathLike) -> None:
    """Write a pyplot figure atomically (temp file, then rename) and close it."""
    import matplotlib.pyplot as plt

    out_png = Path(out_png)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out_png.parent, prefix=out_png.name, suffix=".tmp.png")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=120)
        publish(tmp)
        os.replace(tmp, out_png)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.remove(tmp)
