"""Figures like the paper's (matplotlib, PNG, headless)."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["plot_attack_bars", "plot_tradeoff", "plot_audit", "plot_defences"]


def _save(fig: Any, ax: Any, path: str | Path, title: str) -> Path:
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def plot_attack_bars(rows: Sequence[dict[str, Any]], path: str | Path, *, metric: str = "transfer_top1",
                     title: str = "Identity attack accuracy (transfer learning)") -> Path:
    """Grouped bars: one group per layer, one bar per embedding (the paper's Fig. 9 / 12a)."""
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    kinds = list(dict.fromkeys(r["embedding"] for r in rows))
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(kinds)
    for k, kind in enumerate(kinds):
        vals = [next((r[metric] for r in rows if r["layer"] == lay and r["embedding"] == kind), 0) * 100
                for lay in layers]
        ax.bar([i + k * width for i in range(len(layers))], vals, width, label=kind)
    chance = rows[0]["chance_top1"] * 100
    ax.axhline(chance, color="k", ls="--", lw=1, label=f"chance ({chance:.1f}%)")
    if "primary_floor_top1" in rows[0]:
        floor = rows[0]["primary_floor_top1"] * 100
        ax.axhline(floor, color="gray", ls=":", lw=1, label=f"primary-label floor ({floor:.1f}%)")
    ax.set_xticks([i + width * (len(kinds) - 1) / 2 for i in range(len(layers))], layers)
    ax.set_ylabel("identity top-1 accuracy (%)")
    return _save(fig, ax, path, title)


def plot_tradeoff(curves: dict[str, Sequence[dict[str, Any]]], path: str | Path, *, privacy: str = "rank_privacy",
                  unprotected_accuracy: float | None = None, ceiling: float | None = None,
                  title: str = "Accuracy-privacy trade-off") -> Path:
    """Primary accuracy against privacy, one line per embedding, annotated with sigma (Fig. 10/12b)."""
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for name, rows in curves.items():
        pts = [(r[privacy], r["accuracy"] * 100, r["sigma"]) for r in rows if r.get(privacy) is not None]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
        for x, y, s in pts:
            ax.annotate(f"σ={s:g}", (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
    if unprotected_accuracy is not None:
        ax.axhline(unprotected_accuracy * 100, color="k", ls="--", lw=1, label="unprotected model")
    if ceiling is not None:
        ax.axvline(ceiling, color="gray", ls=":", lw=1, label="primary-label ceiling")
    ax.set_xlabel("identity privacy (" + privacy.replace("_", " ") + ")")
    ax.set_ylabel("primary accuracy (%)")
    return _save(fig, ax, path, title)


def plot_audit(rows: dict[str, Any], path: str | Path) -> Path:
    """Each attack's identity top-1 with its 95% interval as error bars, against chance and the floor.

    ``rows`` is :func:`privsplit.audit.plot_rows`'s plain data (``bars``: attack, top1, ci95, worst).
    """
    bars = rows["bars"]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(bars) + 2), 4))
    vals = [b["top1"] * 100 for b in bars]
    err = [[(b["top1"] - b["ci95"][0]) * 100 for b in bars], [(b["ci95"][1] - b["top1"]) * 100 for b in bars]]
    colours = ["tab:red" if b.get("worst") else "tab:blue" for b in bars]
    ax.bar(range(len(bars)), vals, yerr=err, capsize=4, color=colours)
    ax.axhline(rows["chance"] * 100, color="k", ls="--", lw=1, label=f"chance ({rows['chance']:.1%})")
    ax.axhline(rows["floor"] * 100, color="gray", ls=":", lw=1.5, label=f"floor ({rows['floor']:.1%})")
    ax.set_xticks(range(len(bars)), [b["attack"] + (" (worst)" if b.get("worst") else "") for b in bars],
                  rotation=20, ha="right")
    ax.set_ylabel("identity top-1 (%), 95% CI")
    return _save(fig, ax, path, rows.get("title", "Identity attacks"))


def plot_defences(rows: Sequence[dict[str, Any]], path: str | Path, *, unprotected: float,
                  primary: str = "gender") -> Path:
    """Primary accuracy vs the audit's worst-case identity top-1 (95% CI) per defence point, with the
    floor, 1.25x the floor and the unprotected model's accuracy marked (docs/defences.md's figure)."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        lo, hi = r["worst_top1_ci95"]
        label = f"{r['defence']} {r['knob']:g}" + (f" (dim {r['dim']})" if r.get("dim") else "")
        ax.errorbar([r["worst_top1"] * 100], [r["accuracy"] * 100], xerr=[[(r["worst_top1"] - lo) * 100],
                    [(hi - r["worst_top1"]) * 100]], marker="o", capsize=2, label=label)
    floor = rows[0]["audit_floor_top1"] * 100
    ax.axvline(floor, color="k", ls="--", lw=1, label=f"floor ({floor:.1f}%)")
    ax.axvline(1.25 * floor, color="g", ls=":", lw=1, label="goal: 1.25x floor")
    ax.axhline(unprotected * 100, color="gray", ls="-.", lw=1, label=f"unprotected ({unprotected:.1%})")
    ax.set_xlabel("worst-case identity top-1 (%)")
    ax.set_ylabel(f"{primary} accuracy (%)")
    return _save(fig, ax, path, f"Defences: {primary} vs worst-case identity")
