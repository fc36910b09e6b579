"""Markdown tables and bar/partition charts (like the paper's Figs. 13-15) for :func:`privsplit.edge.cost.run_cost`."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from privsplit.markdown import markdown_table

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["markdown", "write_figures", "fmt_bytes", "partition_markdown", "cost_markdown"]

_RT_NAMES = {"onnx": "ONNX Runtime", "torch": "PyTorch"}
_METRICS = {  # figure stem -> (title, value getter, unit, divisor)
    "latency": ("Inference time (1 thread, batch 1; bar = wall median, whisker = p90, black tick = CPU-time "
                "median)", "ms"),
    "load": ("Model loading time (fresh process, median)", "ms"),
    "memory": ("Memory: peak RSS growth of a fresh process (load + 1 inference)", "MiB"),
}


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    n = float(n)
    for unit, div in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= div:
            return f"{n / div:.1f} {unit}" if abs(n) / div < 100 else f"{n / div:.0f} {unit}"
    return f"{n:.0f} B"


def _group(result: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for rec in result.get("configs", []):
        groups.setdefault(rec["model_key"], []).append(rec)
    return groups


def _value(rec: Mapping[str, Any], rt: str, metric: str) -> tuple[float, float | None]:
    r = rec[rt]
    if metric == "latency":
        return r["latency"]["median_ms"], r["latency"]["p90_ms"]
    if metric == "load":
        return r["load_ms"], None
    return r["peak_bytes"] / 2**20, None


def _cpu(lat: Mapping[str, Any] | None) -> str:
    return "-" if not lat else f"{lat['median_ms']:.2f}"


def _runtimes(result: Mapping[str, Any]) -> list[str]:
    return [rt for rt in result.get("protocol", {}).get("runtimes", ["onnx", "torch"]) if rt in _RT_NAMES]


# ------------------------------------------------------------------------------------------ markdown


def cost_markdown(result: Mapping[str, Any]) -> str:
    rts = _runtimes(result)
    lines: list[str] = []
    for key, recs in _group(result).items():
        lines += [f"### {recs[0]['model']}", ""]
        head = ["config", "MMACs", "params", "ONNX file", "upload / image"]
        for rt in rts:
            head += [f"load {rt} warm / cold (ms)", f"peak mem {rt}", f"latency {rt} wall med / p90, CPU med (ms)"]
        head += ["ONNX vs torch max abs diff"]
        rows = []
        for r in recs:
            row = [r["config"], f"{r['macs'] / 1e6:,.1f}", f"{r['params'] / 1e6:.2f} M", fmt_bytes(r["onnx_bytes"]),
                   "0 (on device)" if r["embedding"] == "full" else f"{r['upload_bytes']:,} B"]
            for rt in rts:
                lat = r[rt]["latency"]
                cold = r[rt].get("cold_load_ms")
                row += [f"{r[rt]['load_ms']:.1f} / " + ("-" if cold is None else f"{cold:.1f}"),
                        fmt_bytes(r[rt]["peak_bytes"]),
                        f"{lat['median_ms']:.2f} / {lat['p90_ms']:.2f}, "
                        + _cpu(r[rt].get("latency_cpu"))]
            row += [f"{r['onnx_max_abs_diff']:.1e}"]
            rows.append(row)
        lines.append(markdown_table(head, rows))
        full = next((r for r in recs if r["embedding"] == "full"), None)
        if full is not None:
            lines += ["", f"Ratios full model / configuration ({recs[0]['model']}):", ""]
            head = ["config", "MACs"]
            for rt in rts:
                head += [f"memory {rt}", f"load {rt} warm / cold", f"latency {rt} wall / CPU"]
            rows = []
            for r in recs:
                if r is full:
                    continue
                row = [r["config"], f"{full['macs'] / r['macs']:.2f}x"]
                for rt in rts:
                    fc, rc = full[rt].get("cold_load_ms"), r[rt].get("cold_load_ms")
                    row += [f"{full[rt]['peak_bytes'] / r[rt]['peak_bytes']:.2f}x",
                            f"{full[rt]['load_ms'] / r[rt]['load_ms']:.2f}x / "
                            + (f"{fc / rc:.2f}x" if fc and rc else "-"),
                            f"{full[rt]['latency']['median_ms'] / r[rt]['latency']['median_ms']:.2f}x / "
                            + (f"{full[rt]['latency_cpu']['median_ms'] / r[rt]['latency_cpu']['median_ms']:.2f}x"
                               if full[rt].get("latency_cpu") and r[rt].get("latency_cpu") else "-")]
                rows.append(row)
            lines.append(markdown_table(head, rows))
        lines.append("")
    return "\n".join(lines)


def partition_markdown(part: Mapping[str, Any]) -> str:
    rows = part["rows"]
    has_priv = any(r.get("privacy") is not None for r in rows)
    head = ["#", "split after", "output (C, H, W)", "upload / image (float32)", "vs raw image", "MMACs on device",
            "device latency wall med / p90, CPU med (ms)"] + (["privacy"] if has_priv else [])
    cells = []
    for r in rows:
        row = [str(r["index"]), r["layer"], "x".join(map(str, r["output_shape"])), f"{r['upload_bytes']:,} B",
               f"{r['upload_vs_image']:.2f}x", f"{r['macs'] / 1e6:,.1f}",
               f"{r['latency_ms_median']:.2f} / {r['latency_ms_p90']:.2f}, "
               + ("-" if r.get("latency_cpu_ms_median") is None else f"{r['latency_cpu_ms_median']:.2f}")]
        if has_priv:
            row.append("-" if r.get("privacy") is None else f"{r['privacy']:.3g}")
        cells.append(row)
    return f"### Partition view: {part['model']}\n\n" + markdown_table(head, cells) + "\n"


def acceptance_markdown(acc: Mapping[str, Any] | None) -> str:
    if not acc:
        return "(the paper's VGG-16 224x224 was not measured in this run)\n"
    lines = [f"{acc['model']}: full model on device vs **{acc['split']}** client "
             f"(upload {acc['upload_bytes']} B per image; MACs ratio {acc['macs_ratio']:.3f}x; "
             f"ONNX file ratio {acc['onnx_bytes_ratio']:.2f}x).", ""]
    head = ["runtime", "memory ratio peak (steady)", "load-time ratio warm, CPU / cold", "latency ratio wall / CPU",
            "full: peak mem; load warm, cold; latency wall, CPU", "split: the same",
            "goal (>= 3x mem, >= 5x warm load)"]
    rows: list[list[str]] = []

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f} ms"

    def x(v: float | None, digits: int = 2) -> str:
        return "-" if v is None else f"{v:.{digits}f}x"

    def side(d: Mapping[str, Any]) -> str:
        return (f"{fmt_bytes(d['peak_bytes'])}; {ms(d['load_ms'])}, {ms(d.get('cold_load_ms'))}; "
                f"{ms(d['latency_ms'])}, {ms(d.get('latency_cpu_ms'))}")

    for rt in ("onnx", "torch"):
        if rt not in acc:
            continue
        a = acc[rt]
        f, s = a["full"], a["split"]
        rows.append([_RT_NAMES[rt], f"{x(a['memory_ratio'])} ({x(a['steady_memory_ratio'])})",
                     f"{x(a['load_ratio'])}, {x(a.get('load_cpu_ratio'))} / {x(a.get('cold_load_ratio'))}",
                     f"{x(a['latency_ratio'], 3)} / {x(a.get('latency_cpu_ratio'), 3)}", side(f), side(s),
                     "met" if a["meets_goal"] else "not met"])
    rows.append(["paper (Caffe Mobile, Nexus 6P)", "3.18x", "6.34x", "", "", "", ""])
    return "\n".join([*lines, markdown_table(head, rows)]) + "\n"


def markdown(result: Mapping[str, Any], figures_rel: str = "figures") -> str:
    p, env = result["protocol"], result["environment"]
    out = ["# On-device cost per split (privsplit cost)", "",
           f"Environment: {env.get('cpu')} ({env.get('cpu_count')} logical CPUs), Python {env.get('python')}, "
           f"torch {env.get('torch')}, onnxruntime {env.get('onnxruntime', '-')}; "
           f"load average {env.get('loadavg_start', '?')} at start.", "",
           f"Protocol: batch 1, 1 thread, {p['warmup']} warm-up + {p['runs']} timed runs per configuration and "
           f"runtime; load time and memory are medians over {p['load_repeats']} fresh processes (model file in "
           f"the page cache; cold = file evicted first, {p.get('cold_repeats', 0)} processes); random (seeded) "
           f"weights.", "", "## Acceptance", "", acceptance_markdown(result.get("acceptance")), "",
           "## Per configuration", "", cost_markdown(result)]
    figs = result.get("figures") or {}
    for stem in ("latency", "load", "memory", "partition"):
        if stem in figs:
            out.append(f"![{stem}]({figures_rel}/{Path(figs[stem]).name})")
    out.append("")
    for part in result.get("partition", {}).values():
        out += [partition_markdown(part), ""]
    return "\n".join(out)


# ------------------------------------------------------------------------------------------- figures


def _series(result: Mapping[str, Any], metric: str) -> list[tuple[str, str, str, str | None]]:
    """(label, runtime, field, hatch) of the bars of one chart."""
    rts = _runtimes(result)
    if metric != "load":
        return [(_RT_NAMES[rt], rt, metric, None) for rt in rts]
    cold = any(rec[rt].get("cold_load_ms") for rec in result["configs"] for rt in rts)
    out = []
    for rt in rts:
        out.append((_RT_NAMES[rt] + (" (warm)" if cold else ""), rt, "load", None))
        if cold:
            out.append((_RT_NAMES[rt] + " (cold)", rt, "cold", "//"))
    return out


def _get(rec: Mapping[str, Any], rt: str, field: str) -> tuple[float, float | None]:
    if field == "cold":
        return float(rec[rt].get("cold_load_ms") or 0.0), None
    return _value(rec, rt, field)


def _save_figure(fig: Figure, path: Path) -> Path:
    """Write ``fig`` to ``path`` (parents created) and close it."""
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def _bar_figure(result: Mapping[str, Any], metric: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    groups = _group(result)
    series = _series(result, metric)
    title, unit = _METRICS[metric]
    log = metric == "load"
    most = max(3, max(len(v) for v in groups.values()))
    fig, axes = plt.subplots(len(groups), 1, figsize=(2.5 + (0.8 + 0.3 * len(series)) * most, 0.8 + 3.3 * len(groups)),
                             squeeze=False)
    colors = {"onnx": "#1f77b4", "torch": "#ff7f0e"}
    bw = 0.84 / max(1, len(series))
    for ax, recs in zip(axes[:, 0], groups.values()):
        full = next((r for r in recs if r["embedding"] == "full"), None)
        xs = np.arange(len(recs))
        top, bottom = 0.0, float("inf")
        for k, (label, rt, field, hatch) in enumerate(series):
            vals = [_get(r, rt, field) for r in recs]
            med = np.array([v[0] for v in vals])
            pos = xs + (k - (len(series) - 1) / 2) * bw
            yerr = None
            if metric == "latency":
                yerr = np.vstack([np.zeros_like(med), np.array([v[1] for v in vals]) - med])
            ax.bar(pos, med, bw, color=colors[rt], label=label, yerr=yerr, capsize=2, hatch=hatch,
                   edgecolor="white" if hatch else None, error_kw={"elinewidth": 0.8})
            if metric == "latency" and all(r[rt].get("latency_cpu") for r in recs):
                cpu = [r[rt]["latency_cpu"]["median_ms"] for r in recs]
                ax.plot(pos, cpu, "_", color="black", ms=12, mew=1.6,
                        label="CPU-time median" if k == 0 else None)
            top = max(top, float((med if yerr is None else med + yerr[1]).max()))
            bottom = min(bottom, float(med[med > 0].min()) if (med > 0).any() else bottom)
            for x, r, m in zip(pos, recs, med):
                if full is None or m <= 0:
                    continue
                ref = _get(full, rt, field)[0]
                txt = f"{m:.3g}" if r is full else f"{ref / m:.2f}x"
                ax.text(x, m, " " + txt, ha="center", va="bottom", fontsize=6.5, rotation=90)
        if log:
            ax.set_yscale("log")
            ax.set_ylim(bottom / 2, top * 12)
        else:
            ax.set_ylim(0, top * 1.3 if top > 0 else 1)
        ax.set_xticks(xs)
        ax.set_xticklabels([r["config"] for r in recs], fontsize=8)
        ax.set_xlim(-0.6, most - 0.4)
        ax.set_title(recs[0]["model"], fontsize=10)
        ax.set_ylabel(unit + (" (log scale)" if log else ""))
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="upper right", ncol=2 if len(series) > 2 else 1)
    fig.suptitle(f"{title}\nfull-model bar: value; split bars: full model / configuration", fontsize=10)
    fig.tight_layout()
    return _save_figure(fig, path)


def _partition_figure(parts: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Per model: bars = bytes uploaded (log, left), line = device latency up to the split (right),
    privacy values (when known) written above their bars and drawn as a second line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    import numpy as np

    most = max(len(p["rows"]) for p in parts)
    fig, axes = plt.subplots(len(parts), 1, figsize=(max(8.0, 0.42 * most + 3), 1.2 + 3.6 * len(parts)), squeeze=False)
    for ax, part in zip(axes[:, 0], parts):
        rows = part["rows"]
        xs = np.arange(len(rows))
        up = np.array([r["upload_bytes"] for r in rows], dtype=float)
        ax.bar(xs, up, 0.7, color="#9ecae1", label="bytes uploaded / image (float32, left)")
        image = 3 * part["input_size"] ** 2
        ax.axhline(image, color="red", lw=0.8, ls="--", label="raw uint8 image (3 x S x S bytes, left)")
        ax.set_yscale("log")
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_ylabel("bytes uploaded per image")
        ax.set_xticks(xs)
        ax.set_xticklabels([r["layer"] for r in rows], rotation=60, ha="right", fontsize=8)
        ax.set_xlim(-0.6, most - 0.4)
        ax.set_title(f"{part['model']}: cost of each split point", fontsize=10)
        ax.grid(axis="y", alpha=0.3, which="major")
        lat = ax.twinx()
        med = [r["latency_ms_median"] for r in rows]
        p90 = [r["latency_ms_p90"] for r in rows]
        lat.plot(xs, med, "o-", color="#d62728", ms=3.5, label="device latency to split (median, right)")
        lat.plot(xs, p90, ":", color="#d62728", lw=1, label="device latency, p90 (right)")
        if all(r.get("latency_cpu_ms_median") is not None for r in rows):
            lat.plot(xs, [r["latency_cpu_ms_median"] for r in rows], "--", color="black", lw=0.9,
                     label="device CPU time, median (right)")
        lat.set_ylabel("ms (torch, 1 thread, batch 1)")
        lat.set_ylim(0, max(p90) * 1.15)
        handles = ax.get_legend_handles_labels()[0] + lat.get_legend_handles_labels()[0]
        priv = [r.get("privacy") for r in rows]
        if any(v is not None for v in priv):
            pv = ax.twinx()
            pv.spines["right"].set_position(("axes", 1.07))
            known = [(x, v) for x, v in zip(xs, priv) if v is not None]
            pv.plot([k[0] for k in known], [k[1] for k in known], "s--", color="#2ca02c", ms=4,
                    label="privacy (attack result, outer right)")
            pv.set_ylabel("privacy", color="#2ca02c")
            handles += pv.get_legend_handles_labels()[0]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06 / len(parts), 1, 1))
    return _save_figure(fig, path)


def write_figures(result: Mapping[str, Any], folder: str | Path) -> dict[str, str]:
    """Write ``edge_latency.png``, ``edge_load.png``, ``edge_memory.png`` and ``edge_partition.png``."""
    folder = Path(folder)
    out: dict[str, str] = {}
    if result.get("configs"):
        for metric in ("latency", "load", "memory"):
            out[metric] = str(_bar_figure(result, metric, folder / f"edge_{metric}.png"))
    parts = list(result.get("partition", {}).values())
    if parts:
        out["partition"] = str(_partition_figure(parts, folder / "edge_partition.png"))
    return out
