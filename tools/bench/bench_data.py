"""Data-pipeline throughput: embedding docs/s (MiniLM, hashing) and tokenization MB/s.

Runs on the committed real-text fixture corpus (tests/fixtures/corpus, 8 domains), repeated
to a measurable size, through the same public functions the CLI uses.

    python tools/bench/bench_data.py [--docs 256] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from data_select.embed import get_encoder  # noqa: E402
from data_select.sources import iter_documents  # noqa: E402
from data_select.tokenize import tokenize_corpus  # noqa: E402

FIXTURE = ROOT / "tests" / "fixtures" / "corpus"


def docs_per_s(encoder, texts: list[str], batch: int) -> float:
    encoder.encode(texts[:batch])  # warm-up
    t0 = time.perf_counter()
    for i in range(0, len(texts), batch):
        encoder.encode(texts[i:i + batch])
    return len(texts) / (time.perf_counter() - t0)


def main() -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--docs", type=int, default=256, help="documents embedded per encoder")
    p.add_argument("--json")
    args = p.parse_args()
    texts = [d.text for d in iter_documents([str(FIXTURE / "*.jsonl")])]
    pool = (texts * (args.docs // len(texts) + 1))[: args.docs]
    out = {}
    for name, max_tokens in (("minilm", 256), ("minilm", 128), ("hashing", None)):
        enc = get_encoder(name, max_tokens=max_tokens)
        n = len(pool) if name == "minilm" else len(pool) * 8
        rate = docs_per_s(enc, (pool * 8)[:n], 64)
        key = f"embed_{name}" + (f"_{max_tokens}tok" if max_tokens else "")
        out[key + "_docs_per_s"] = rate
        print(f"{key}: {rate:,.1f} docs/s", flush=True)
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "corpus.jsonl"
        with open(src, "w") as f:
            for i in range(20):  # ~9 MB of real text
                for j, t in enumerate(texts):
                    f.write(json.dumps({"id": f"{i}-{j}", "text": t}) + "\n")
        mb = src.stat().st_size / 1e6
        tok_dir = Path(d) / "tok"
        t0 = time.perf_counter()
        tokenize_corpus([src], tok_dir, vocab_size=8000, num_workers=1, progress=False)
        out["tokenizer_train_and_tokenize_s"] = time.perf_counter() - t0
        for workers in (1, 2):
            t0 = time.perf_counter()
            tokenize_corpus([src], Path(d) / f"w{workers}", tokenizer=tok_dir / "tokenizer", num_workers=workers,
                            progress=False)
            out[f"tokenize_mb_per_s_{workers}w"] = mb / (time.perf_counter() - t0)
            print(f"tokenize ({workers} worker(s), given tokenizer): {out[f'tokenize_mb_per_s_{workers}w']:.2f} MB/s "
                  f"on {mb:.1f} MB", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
