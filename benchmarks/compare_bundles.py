"""Paired tests between two audits of different bundles on the same data and seeds (issue 10):
worst case vs worst case, and attack by attack. Prints Markdown lines for docs/audit.md.

    python benchmarks/compare_bundles.py reports/audit/simple-conv5_3-fast/audit.json \\
        reports/audit/advanced-conv5_3-fast/audit.json
"""
from __future__ import annotations

import json
import sys

from privsplit.audit import compare_audits, leak_sentence


def main() -> None:
    a_path, b_path = sys.argv[1:3]
    a, b = json.loads(open(a_path).read()), json.loads(open(b_path).read())
    na, nb = a["embedding"], b["embedding"]
    print(f"* worst case vs worst case ({a['worst_case']['attack']} on {na}, {b['worst_case']['attack']} on {nb}), "
          f"{na} minus {nb}: {leak_sentence(na, nb, compare_audits(a, b))}")
    names = [x["name"] for x in a["attacks"]]
    for name in names:
        if name in [x["name"] for x in b["attacks"]]:
            try:
                print(f"* {name}: {leak_sentence(na, nb, compare_audits(a, b, attack=name))}")
            except (ValueError, KeyError) as e:
                print(f"* {name}: no paired test ({e})")


if __name__ == "__main__":
    main()
