"""`python -m pretrain`, then a count of the gloo threads still alive after pretrain's own teardown.

A process group that outlives the teardown keeps its gloo worker threads running into interpreter
finalization, where one that frees a Python-created tensor aborts the process (SIGABRT,
"terminate called without an active exception"). Tests launch this instead of `-m pretrain` and
assert the count is zero.
"""
import os
import sys

from pretrain.cli import main

if __name__ == "__main__":
    rc = main(sys.argv[1:])
    names = [open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task")]
    left = sum(n.startswith(("pt_gloo", "gloo")) for n in names)
    print(f"rank {os.environ.get('RANK', '0')}: gloo threads after teardown: {left}", flush=True)
    sys.exit(rc)
