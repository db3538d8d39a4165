"""Print the quickstart's summary: which corpus, what was curated, what was trained, what each budget got."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from data_select.corpus import status_line


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--corpus", default=None, help="corpus directory (corpus.json) the data run read")
    p.add_argument("--data", required=True, help="data-select run output directory")
    p.add_argument("--plan", required=True, help="pretrain plan run directory")
    p.add_argument("--seconds", type=int, default=None, help="wall time of the whole job")
    args = p.parse_args()
    report = json.loads((Path(args.data) / "report.json").read_text())
    manifest = json.loads((Path(args.data) / "tokens" / "manifest.json").read_text())
    plan = json.loads((Path(args.plan) / "branches.json").read_text())
    acc, spec = report["accounting"], report["spectrum"]
    print("\n=== quickstart summary ===")
    if args.corpus:
        print(f"corpus: {args.corpus}: {status_line(json.loads((Path(args.corpus) / 'corpus.json').read_text()))}")
    print(f"data: {acc['input_documents']:,} documents -> {acc['selected']:,} selected by "
          f"{report['selection']['method']} ({acc['not_selected']:,} not selected, {acc['deduplicated']:,} near-duplicates, "
          f"{acc['rejected']['total'] if isinstance(acc['rejected'], dict) else acc['rejected']:,} rejected)")
    top = spec["top_k"]
    for name in ("selected", "random", "pool"):
        s = spec[name]
        print(f"  {name:<9} dominance(top {top}) {s['dominance']:.3f}   effective rank {s['effective_rank']:.1f}")
    tr = manifest["splits"]["train"]
    print(f"tokens: {tr['tokens']:,} train / {manifest['splits']['val']['tokens']:,} val, "
          f"vocab {manifest['tokenizer']['vocab_size']:,} ({manifest['tokenizer']['kind']})")
    print(f"{'budget':>8} {'steps':>6} {'tokens':>10} {'val loss':>9}  HF model")
    for r in plan["budgets"]:
        print(f"{r['budget']:>8} {r['steps']:>6} {r['tokens']:>10,} {r['final_val_loss']:>9.4f}  {r['hf']}")
    longest = plan["budgets"][-1]["tokens"]
    print(f"data used: {longest:,} of {tr['tokens']:,} train tokens ({100 * longest / tr['tokens']:.0f}% of one epoch; "
          f"each model sees every token at most once)")
    print(f"tokens trained: {plan['plan_tokens']:,} for {len(plan['budgets'])} finished models "
          f"(separate runs: {plan['separate_runs_tokens']:,})")
    plots = [(plan.get("plot"), "loss curves of the main run and every budget"),
             (str(Path(args.data) / "domains.png"), "files per domain, selection vs pool"),
             (str(Path(args.data) / "spectrum.png"), "feature spectra")]
    for path, what in plots:
        if path and Path(path).is_file():
            print(f"plot: {path} ({what})")
    if args.seconds is not None:
        print(f"wall time: {args.seconds // 60} min {args.seconds % 60} s")


if __name__ == "__main__":
    main()
