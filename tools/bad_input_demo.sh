#!/usr/bin/env bash
# The committed bad-input corpus, plus what git cannot hold (symlink loops, a dangling link, a FIFO, a
# socket, a device), through `data-select run`: every good document kept, every bad one counted by reason.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd); D=${1:-/tmp/budgetlm-bad-input}
rm -rf "$D/corpus" "$D/out" && mkdir -p "$D" && cp -r "$REPO/tests/fixtures/bad-input" "$D/corpus"
cd "$D/corpus"
ln -s . loop; ln -s self.txt self.txt; ln -s nowhere.jsonl dangling.jsonl; mkfifo pipe.jsonl; ln -s /dev/zero zero.txt
python3 -c "import socket; s=socket.socket(socket.AF_UNIX); s.bind('sock.txt')"
cat > "$D/run.yaml" <<YAML
inputs: [$D/corpus]
out_dir: $D/out
domain_field: meta.redpajama_set_name
embed: {encoder: hashing, dim: 32, batch_size: 16}
select: {method: disf, ratio: 0.25, batch_size: 16}
progress: false
tokenize: {vocab_size: 600, val_fraction: 0.1, workers: 1}
YAML
cd "$REPO"
timeout 600 .venv/bin/data-select run "$D/run.yaml" 2>&1 | grep -v "^\s*$" | tail -25
echo "rc=${PIPESTATUS[0]}"
