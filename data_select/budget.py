"""Token budgets: how many tokens a document will cost, before it is tokenized.

Budgets in this framework are tokens; selection methods pick documents. A document's tokens
are estimated from the table's ``bytes`` column (UTF-8 bytes of its text) with a bytes-per-token
figure measured on a seeded sample of the pool with the run's tokenizer:

- a given tokenizer (``tokenize.tokenizer``, ``--tokenizer``) is used as is;
- otherwise the run will train sentencepiece BPE on the selection, which does not exist yet, so a
  provisional tokenizer of the same recipe and vocabulary is trained on one half of the sample
  (every other sampled document) and measured on the other half.

The figure is measured per domain (a domain with less than :data:`MIN_DOMAIN_BYTES` of sample
text uses the pool's figure): code and prose differ by ~1.5× in bytes per token, and a method
that favours one domain would otherwise be misjudged. Estimated tokens of a document =
bytes / bytes-per-token + 1 (the EOS every document gets in the token shards). The report
shows the estimate next to the tokens actually written.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from data_select.errors import UsageError
from data_select.table import Table

SAMPLE_BYTES = 4 << 20  # sampled text per half (train / measure)
SAMPLE_DOCS = 20_000  # at most this many documents are sampled
MIN_DOMAIN_BYTES = 64 << 10


def measure_bytes_per_token(table: Table, *, tokenizer: str | Path | None = None, vocab_size: int = 8000,
                            seed: int = 0, sample_bytes: int = SAMPLE_BYTES, progress: bool = False) -> dict:
    """Bytes per token of the pool's text under the run's tokenizer (module docstring)."""
    from data_select.tokenize import load_tokenizer, train_tokenizer

    rng = np.random.default_rng([seed, 7])
    m = min(table.n, SAMPLE_DOCS)
    drawn = rng.choice(table.n, size=m, replace=False)  # in random order; O(m) memory for m << n
    sizes = table.column("bytes", drawn)
    halves = 1 if tokenizer is not None else 2
    take = int(np.searchsorted(np.cumsum(sizes), halves * sample_bytes, "left")) + 1
    rows = drawn[:take]
    texts = dict(table.texts(np.sort(rows), progress=progress))
    measure = rows if tokenizer is not None else rows[1::2]
    with tempfile.TemporaryDirectory(prefix=".bytes-per-token-") as tmp:
        if tokenizer is None:
            train = [texts[r] for r in rows[0::2].tolist()]
            tok = load_tokenizer(train_tokenizer(train, Path(tmp) / "tok", vocab_size=vocab_size, seed=seed))
            how = (f"sentencepiece BPE (vocab {vocab_size}) trained on {len(train):,} sampled documents "
                   f"({sum(len(t.encode('utf-8')) for t in train):,} bytes), measured on {len(measure):,} others")
        else:
            tok = load_tokenizer(tokenizer)
            how = f"tokenizer {tokenizer}, measured on {len(measure):,} sampled documents"
        backend = tok.backend_tokenizer
        order = measure.tolist()
        counts = np.array([len(e.ids) for lo in range(0, len(order), 256)
                           for e in backend.encode_batch([texts[r] for r in order[lo:lo + 256]], add_special_tokens=False)],
                          dtype=np.float64)
    nbytes = table.column("bytes", measure).astype(np.float64)
    if counts.sum() == 0:
        raise UsageError("cannot measure bytes per token: the sampled documents give no tokens")
    overall = float(nbytes.sum() / counts.sum())
    codes = table.column("domain", measure)
    by_domain = {}
    for c in np.unique(codes[codes >= 0]).tolist():
        m_ = codes == c
        if nbytes[m_].sum() >= MIN_DOMAIN_BYTES and counts[m_].sum() > 0:
            by_domain[table.domains[c]] = float(nbytes[m_].sum() / counts[m_].sum())
    return {"bytes_per_token": overall, "by_domain": by_domain, "how": how,
            "sample": {"documents": int(len(measure)), "bytes": int(nbytes.sum()), "tokens": int(counts.sum()),
                       "seed": seed}}


def estimated_tokens(table: Table, bpt: dict, rows: np.ndarray | None = None) -> np.ndarray:
    """Estimated tokens (float64) of every row (or of ``rows``): bytes / bytes-per-token + 1."""
    per_code = np.full(len(table.domains) + 1, bpt["bytes_per_token"], dtype=np.float64)  # last slot: no domain
    for name, v in bpt.get("by_domain", {}).items():
        if name in table.domains:
            per_code[table.domains.index(name)] = v
    if rows is None:
        out = np.empty(table.n, dtype=np.float64)
        for (lo, b), (_, d) in zip(table.chunks("bytes"), table.chunks("domain")):
            out[lo:lo + len(b)] = b / per_code[d] + 1.0
        return out
    return table.column("bytes", rows) / per_code[table.column("domain", rows)] + 1.0


def prefix_reaching(order: np.ndarray, costs: np.ndarray, budget: float) -> np.ndarray:
    """The shortest prefix of ``order`` whose costs add up to at least ``budget`` (all of it if
    they never do): a selection that covers the budget, over it by less than one document."""
    total = np.cumsum(costs[order])
    return order[: int(np.searchsorted(total, budget, "left")) + 1]
