"""Repeated queries against fresh vs keyed device noise: exact repeats and near-duplicates, k = 1, 4, 16.

    nice -n 10 python benchmarks/keyed_repeats.py --run runs/lfw-gender \\
        [--bundle BUNDLE] [--attacks 1-nn,likelihood] [--ks 1,4,16] [--ckplus] [--out docs/keyed_noise_results.md]

Rows (one enrolment draw, seed 0; top-1 over the run's attack identities with identity-bootstrap 95% CI):

* ``fresh, exact``: today's client; the same photo sent k times, fresh noise each time, averaged
  (``privsplit.audit.audit(repeats=k)``).
* ``keyed, exact``: keyed noise; k sends of one photo carry identical features (the audit's simulation
  honours ``identical_repeats``), so the average is one draw.
* ``keyed, jpeg`` / ``keyed, shift``: k near-duplicates of each query (re-encoded JPEG at quality
  95, 93, ...; shifts of up to 2 px, edge-replicated), each hashing differently so each gets
  independent keyed noise; the attacker averages their received features and tells its noise-aware
  scorer that k draws were averaged.
* ``keyed, ck+ frames`` (``--ckplus``): CK+ frames of one sequence as natural near-duplicates (the
  LFW model's extractor applied to CK+ faces; the k frames are the query and k-1 others of its
  sequence, fewer when the sequence is shorter: the mean count is printed).

The attacks are the clean-bank ones (``1-nn``, noise-aware ``likelihood``): they need no auxiliary
training, and the likelihood attack is the one that profits most from averaging. The worst of them is
reported per row (plain maximum: optimistic for the attacker).
"""
from __future__ import annotations

import argparse
import io
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import privsplit.attacks  # noqa: F401  (registers the built-in attacks)
from privsplit.attacks.base import ATTACKS, identity_result
from privsplit.attacks.common import clean_features
from privsplit.attacks.data import attack_data
from privsplit.audit import audit
from privsplit.audit.inputs import dataset_inputs, run_inputs
from privsplit.audit.run import load_target
from privsplit.defenses.keyed import KeyedGaussianNoise


def keyed_view(emb, seed: int = 0):  # type: ignore[no-untyped-def]
    """The same embedding with keyed noise of the same sigma/scale/std (simulation: reproducible draws)."""
    n = emb.noise
    return emb.with_noise(KeyedGaussianNoise(sigma=n.sigma, scale=n.scale, std=n.std, deterministic=True, seed=seed))


def jpeg_variant(images: torch.Tensor, j: int) -> torch.Tensor:
    """uint8 (N, 3, H, W) re-encoded as JPEG at quality 95 - 2 j (j = 0 is the photo itself)."""
    if j == 0:
        return images
    out = []
    for img in images.permute(0, 2, 3, 1).numpy():
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=95 - 2 * (j - 1))
        out.append(np.asarray(Image.open(buf).convert("RGB")))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()


SHIFTS = sorted(((dx, dy) for dx in range(-2, 3) for dy in range(-2, 3)), key=lambda s: (abs(s[0]) + abs(s[1]), s))


def shift_variant(images: torch.Tensor, j: int) -> torch.Tensor:
    """uint8 (N, 3, H, W) shifted by SHIFTS[j] pixels, edges replicated (j = 0 is the photo itself)."""
    dx, dy = SHIFTS[j]
    h, w = images.shape[2:]
    rows = (torch.arange(h) - dy).clamp(0, h - 1)
    cols = (torch.arange(w) - dx).clamp(0, w - 1)
    return images[:, :, rows][:, :, :, cols]


def _score_rows(name: str, emb, d, received_fn, ks: list[int], primary: str) -> dict[int, object]:  # type: ignore[no-untyped-def]
    """Fit attack ``name`` on the enrolment photos; top-1 for each k of ``received_fn(k)``."""
    attack = ATTACKS.build(name, emb, seed=0, embedding_name="keyed").fit(d.enrol, column="identity")
    y = attack.targets(d.query, "identity")
    out = {}
    for k in ks:
        received, k_eff = received_fn(k)
        scores = attack.score(received, repeats=k_eff)
        out[k] = identity_result(name, "keyed", scores, y, d.query, primary, seed=0).figures["top1"]
    return out


def near_duplicate_rows(emb, d, variant, ks: list[int], attacks: list[str], primary: str) -> dict[int, object]:  # type: ignore[no-untyped-def]
    """Worst top-1 over ``attacks`` when the server averages k near-duplicates with independent keyed noise."""
    torch.manual_seed(0)
    clean = torch.stack([clean_features(emb, replace(d.query, images=variant(d.query.images, j)))[0]
                         for j in range(max(ks))])
    noisy = torch.stack([emb.noise(c) for c in clean])  # different crops -> independent keyed draws

    def received(k: int) -> tuple[torch.Tensor, int]:
        return noisy[:k].mean(0), k

    return _worst({a: _score_rows(a, emb, d, received, ks, primary) for a in attacks}, ks)


def sequence_rows(emb, d, group: str, ks: list[int], attacks: list[str], primary: str) -> tuple[dict, dict]:  # type: ignore[no-untyped-def]
    """CK+: average the query with up to k-1 other frames of its sequence (each independently noised)."""
    torch.manual_seed(0)
    noisy = emb.noise(clean_features(emb, d.query)[0])
    seq = np.asarray(d.query.manifest.column(group))
    members = {s: np.flatnonzero(seq == s) for s in set(seq.tolist())}
    counts: dict[int, float] = {}

    def received(k: int) -> tuple[torch.Tensor, int]:
        rows, used = [], []
        for i, s in enumerate(seq):
            others = [m for m in members[s] if m != i][: k - 1]
            idx = [i, *others]
            rows.append(noisy[idx].mean(0))
            used.append(len(idx))
        counts[k] = float(np.mean(used))
        return torch.stack(rows), max(1, int(round(counts[k])))

    return _worst({a: _score_rows(a, emb, d, received, ks, primary) for a in attacks}, ks), counts


def _worst(per_attack: dict[str, dict[int, object]], ks: list[int]) -> dict[int, tuple[str, object]]:
    return {k: max(((a, r[k]) for a, r in per_attack.items()), key=lambda t: t[1].value) for k in ks}  # type: ignore[attr-defined]


def exact_rows(emb, inp, ks: list[int], attacks: list[str]) -> dict[int, tuple[str, object]]:  # type: ignore[no-untyped-def]
    """The audit's repeated-query rows (seed 0, plain maximum over ``attacks``)."""
    out = {}
    for k in ks:
        rep = audit(emb, inp.targets, aux=None, group=inp.group, sensitive=inp.sensitive, primary=inp.primary,
                    attacks=attacks, seeds=1, repeats=k, progress=False)
        out[k] = (rep.optimistic.attack, rep.optimistic.top1)
    return out, rep.floors.reference  # type: ignore[return-value]


def _line(label: str, rows: dict[int, tuple[str, object]], ks: list[int], floor: float, extra: str = "") -> str:
    cells = " | ".join(f"{rows[k][1]} ({rows[k][0]}, {rows[k][1].value / floor:.2f}x)" for k in ks)  # type: ignore[attr-defined]
    return f"| {label} | {cells} |{extra}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--bundle", type=Path, default=None, help="default: RUN/bundles/advanced-conv5_3")
    ap.add_argument("--attacks", default="1-nn,likelihood")
    ap.add_argument("--ks", default="1,4,16")
    ap.add_argument("--ckplus", action="store_true", help="also CK+ sequences as natural near-duplicates")
    ap.add_argument("--ckplus-only", action="store_true", help="only the CK+ section (appended to --out)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("docs/keyed_noise_results.md"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ks, attacks = [int(k) for k in args.ks.split(",")], args.attacks.split(",")
    bundle = args.bundle or args.run / "bundles" / "advanced-conv5_3"
    t0 = time.perf_counter()
    fresh, _ = load_target(bundle)
    if args.ckplus_only:
        from privsplit.defenses.bundles import load_client_bundle

        extra = ckplus_section(keyed_view(fresh), load_client_bundle(bundle / "client").preprocess, ks, attacks)
        with args.out.open("a") as f:
            f.write("\n".join(extra + ["", f"Command: `python {' '.join(sys.argv)}`"]) + "\n")
        print("\n".join(extra))
        return
    keyed = keyed_view(fresh)
    inp = run_inputs(args.run)
    d = attack_data(inp.targets, seed=0, group=inp.group)
    head = " | ".join(f"k = {k}" for k in ks)
    lines = [f"# Repeated queries: fresh vs keyed noise ({bundle})", "", f"Command: `python {' '.join(sys.argv)}`", "",
             f"Targets: {len(d.query)} queries of {len(set(d.query.labels['identity'].tolist()))} people, 15 enrolment "
             f"photos each, seed 0; attacks {attacks}, worst (plain maximum) per cell; top-1 [95% CI] (attack, x floor).", "",
             f"| noise, repeats | {head} |", "|---|" + "---|" * len(ks)]
    rows, floor = exact_rows(fresh, inp, ks, attacks)
    lines.append(_line("fresh, exact repeats", rows, ks, floor))
    print(lines[-1], flush=True)
    rows, _ = exact_rows(keyed, inp, ks, attacks)
    lines.append(_line("keyed, exact repeats", rows, ks, floor))
    print(lines[-1], flush=True)
    for label, variant in (("keyed, JPEG re-encodes", jpeg_variant), ("keyed, shifts <= 2 px", shift_variant)):
        lines.append(_line(label, near_duplicate_rows(keyed, d, variant, ks, attacks, inp.primary), ks, floor))
        print(lines[-1], flush=True)
    lines += ["", f"Primary-label floor {floor:.1%}. Time {time.perf_counter() - t0:.0f} s."]
    if args.ckplus:
        from privsplit.defenses.bundles import load_client_bundle

        lines += ckplus_section(keyed, load_client_bundle(bundle / "client").preprocess, ks, attacks)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def ckplus_section(keyed, pre, ks: list[int], attacks: list[str]) -> list[str]:  # type: ignore[no-untyped-def]
    """CK+ frames of one sequence as natural near-duplicates, through the same (LFW) extractor and preprocess
    (the question is how much averaging frames gains against keyed noise, not CK+'s own task)."""
    inp = dataset_inputs("ckplus", pre, primary="expression", aux=False, group="sequence", n_enrol=5, n_val=2)
    d = attack_data(inp.targets, n_enrol=5, seed=0, group=inp.group)
    rows, counts = sequence_rows(keyed, d, inp.group, ks, attacks, inp.primary)
    floor = attack_data_floor(d, inp.primary)
    cnt = ", ".join(f"k={k}: {counts[k]:.1f}" for k in ks)
    return ["", "## CK+ sequences (natural near-duplicates)", "", f"| noise, repeats | {' | '.join(f'k = {k}' for k in ks)} |",
            "|---|" + "---|" * len(ks), _line("keyed, frames of one sequence", rows, ks, floor),
            "", f"Mean frames actually averaged ({cnt}); floor {floor:.1%}; {len(d.query)} queries; 5 enrolment "
            "photos per subject (CK+ has few sequences per subject), enrolment and query never share a sequence."]


def attack_data_floor(d, primary: str) -> float:  # type: ignore[no-untyped-def]
    from privsplit.audit.floors import floors_of

    return floors_of(d.enrol, d.query, sensitive="identity", primary=primary, structure=False).reference


if __name__ == "__main__":
    main()
