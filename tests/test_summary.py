"""tools/summary.py (the quickstart's last step) names the plots a user should look at."""
import json
import subprocess
import sys

from tests.conftest import ROOT


def test_summary_names_plan_png_and_domain_chart(tmp_path):
    data, plan = tmp_path / "data", tmp_path / "plan"
    (data / "tokens").mkdir(parents=True)
    plan.mkdir()
    spectrum = {n: {"dominance": 0.2, "effective_rank": 10.0} for n in ("selected", "random", "pool")}
    (data / "report.json").write_text(json.dumps({
        "accounting": {"input_documents": 10, "selected": 2, "not_selected": 8, "deduplicated": 0,
                       "rejected": {"total": 0}},
        "spectrum": {**spectrum, "top_k": 10}, "selection": {"method": "disf"}}))
    (data / "tokens" / "manifest.json").write_text(json.dumps({
        "splits": {"train": {"tokens": 100}, "val": {"tokens": 10}}, "tokenizer": {"vocab_size": 64, "kind": "bpe"}}))
    for png in (plan / "plan.png", data / "domains.png"):
        png.write_bytes(b"\x89PNG")
    (plan / "branches.json").write_text(json.dumps({
        "budgets": [{"budget": 8, "steps": 1, "tokens": 256, "final_val_loss": 5.0, "hf": "hf"}], "plan_tokens": 256,
        "separate_runs_tokens": 256, "plot": str(plan / "plan.png")}))
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "summary.py"), "--data", str(data), "--plan", str(plan)],
                         capture_output=True, text=True, check=True).stdout
    assert f"plot: {plan / 'plan.png'} (loss curves of the main run and every budget)" in out
    assert f"plot: {data / 'domains.png'} (files per domain, selection vs pool)" in out
    assert "spectrum.png" not in out  # not there: not named
