#!/usr/bin/env python3
"""Merges the kernels step's second run into its first: DIR/kernels_more.json's rows replace
those of the same kernels in DIR/kernels.json, so that every reader of kernels.json (the report,
the plots, the CPU backend's kernel rates) finds them in one file. tools/gpu-check.sh runs the
kinds that have not yet run on a GPU in a process of their own (a sticky CUDA error there ends
only that process); "complete" is true only when both runs reached their last row.
Usage: kernels_merge.py DIR
"""
import json
import os
import sys


def load(path):
    try:
        with open(path) as f:
            doc = json.load(f)
        return doc if isinstance(doc, dict) else None
    except (OSError, ValueError):
        return None


def merge(d):
    main, more = load(os.path.join(d, "kernels.json")), load(os.path.join(d, "kernels_more.json"))
    if not more or not more.get("rows"):
        return False
    doc = main if main is not None else {k: v for k, v in more.items() if k != "rows"}
    names = {r.get("kernel") for r in more["rows"]}
    doc["rows"] = [r for r in doc.get("rows", []) if r.get("kernel") not in names] + more["rows"]
    # Each run's own "complete", which the merged one no longer tells apart (both cut by their
    # step limits: the report keeps each run's rows as partial, not left out).
    own = bool(main and main.get("complete_kernels", main.get("complete")))
    doc["complete"] = own and bool(more.get("complete"))
    doc["complete_kernels"], doc["complete_kernels_more"] = own, bool(more.get("complete"))
    tmp = os.path.join(d, "kernels.json.part")
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    os.replace(tmp, os.path.join(d, "kernels.json"))
    return True


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__.strip().splitlines()[-1])
    merge(sys.argv[1])
