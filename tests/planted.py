"""Planted Gaussian identities: a fake embedding whose transmitted features are known exactly.

Use it to test an identity attack against a *known* optimum::

    from planted import planted_faces
    p = planted_faces(n_targets=20, per_target=40, n_aux=150, per_aux=6, dim=6, seed=0)
    emb = p.embedding(sigma=0.8)                 # GaussianNoise(sigma, isotropic, deterministic)
    data = attack_data(p.targets, aux=p.aux)     # images look like faces to every attack
    bayes = p.bayes_top1(sigma=0.8)              # Monte-Carlo Bayes top-1 with the true parameters

How it works. Image ``i`` encodes its row id (not a face): each image is constant along its rows and
made of horizontal bands, one value per (channel, band), so flips, shifts of up to 4 px (replicate
padding) and brightness/contrast jitter -- :func:`privsplit.data.transforms.augment` -- leave the id
readable (two reference bands fix the affine jitter). :class:`PlantedEmbedding` decodes the id and
returns ``features[id]``: ``mean[identity] + within * N(0, I)`` drawn once per image (so augmented
copies of one image give the same clean feature). The noise is a ``GaussianNoise`` with a known
``sigma`` (deterministic seed), and ``bayes_top1`` is the top-1 of the Bayes classifier that knows the
true means and covariance ``(within^2 + noise_var / repeats) I``: nearest true mean.

``primary_only=True`` plants means that depend on gender alone: the embedding carries the primary
label and nothing else about identity, so every attack must fall to the primary-label floor.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from privsplit.data import FaceData, Manifest, Preprocess
from privsplit.defenses.noise import GaussianNoise, NoNoise

__all__ = ["Planted", "PlantedEmbedding", "planted_faces", "encode_ids", "decode_ids"]

SIZE, BAND, LEVEL = 20, 10, 17  # 20 px images, 2 bands of 10 rows per channel, digits in base 16 (x17)


def encode_ids(ids: Tensor) -> Tensor:
    """uint8 images (N, 3, SIZE, SIZE) carrying ``ids`` (< 16**4) robustly to ``augment``."""
    ids = ids.to(torch.int64)
    if int(ids.max()) >= 16 ** 4:
        raise ValueError("planted ids must be < 65536")
    digits = torch.stack([(ids // 16 ** k) % 16 for k in range(4)], 1) * LEVEL  # (N, 4)
    vals = torch.cat([torch.zeros(len(ids), 1, dtype=torch.int64), torch.full((len(ids), 1), 255), digits], 1)
    bands = vals.view(-1, 3, 2, 1, 1).expand(-1, 3, 2, BAND, SIZE)  # (N, C, band, rows, cols)
    return bands.reshape(-1, 3, SIZE, SIZE).to(torch.uint8)


def decode_ids(x: Tensor) -> Tensor:
    """Ids from normalised (possibly augmented) inputs; needs one mean/std for all channels."""
    centre = x[:, :, BAND // 2 :: BAND, 0].reshape(len(x), 6).double()  # one pixel per (channel, band)
    low, high = centre[:, :1], centre[:, 1:2]
    digits = torch.round((centre[:, 2:] - low) / (high - low) * 255 / LEVEL).to(torch.int64).clamp(0, 15)
    return (digits * torch.tensor([16 ** k for k in range(4)])).sum(1)


class _Lookup(nn.Module):
    """The planted 'extractor': decode the id, return its feature row."""

    def __init__(self, table: Tensor) -> None:
        super().__init__()
        self.register_buffer("table", table)

    def forward(self, x: Tensor) -> Tensor:
        return self.table[decode_ids(x).to(self.table.device)]


class PlantedEmbedding(nn.Module):
    """Embedding-shaped stand-in: ``client_features`` = planted row (+ ``noise`` when noisy).

    Has ``extractor`` (the lookup; not differentiable in the image), ``reduce``/``reconstruct``
    (identity), ``analyzer`` (a fresh linear primary head ending in ``nn.Linear``), ``noise``, ``kind``
    and ``layer`` like :class:`privsplit.defenses.embedding.Embedding`.
    """

    kind, layer = "planted", "planted"

    def __init__(self, table: Tensor, *, noise: nn.Module | None = None, n_primary: int = 2) -> None:
        super().__init__()
        self.extractor = _Lookup(table.float())
        self.reduce, self.reconstruct = nn.Identity(), nn.Identity()
        self.analyzer = nn.Sequential(nn.Flatten(), nn.Linear(table[0].numel(), n_primary))
        self.noise = noise if noise is not None else NoNoise()

    def client_features(self, x: Tensor, *, noisy: bool = True) -> Tensor:
        z = self.reduce(self.extractor(x))
        return self.noise(z) if noisy else z

    def analyze(self, z: Tensor) -> Tensor:
        return self.analyzer(self.reconstruct(z))

    def forward(self, x: Tensor) -> Tensor:
        return self.analyze(self.client_features(x))

    def with_noise(self, noise: nn.Module) -> PlantedEmbedding:
        return PlantedEmbedding(self.extractor.table, noise=noise, n_primary=self.analyzer[1].out_features)

    def transmitted_shape(self, input_size: int) -> tuple[int, ...]:
        return tuple(self.extractor.table.shape[1:])


@dataclass
class Planted:
    """Planted data: ``targets`` (people to re-identify), ``aux`` (other people), all features and means."""

    targets: FaceData
    aux: FaceData
    features: Tensor  # (rows, dim): clean feature of every image id (targets and aux)
    means: Tensor  # (people, dim): true mean per identity code
    target_ids: Tensor  # identity codes of the targets
    within: float

    def embedding(self, sigma: float = 0.0, *, seed: int = 0) -> PlantedEmbedding:
        """The planted client with isotropic ``GaussianNoise(sigma)`` (deterministic, ``seed``)."""
        noise = GaussianNoise(sigma=sigma, deterministic=True, seed=seed) if sigma > 0 else NoNoise()
        return PlantedEmbedding(self.features, noise=noise)

    def bayes_top1(self, sigma: float = 0.0, *, repeats: int = 1, n: int = 40000, seed: int = 0) -> float:
        """Monte-Carlo top-1 of the Bayes classifier (true means, isotropic covariance) over the targets."""
        gen = torch.Generator().manual_seed(seed)
        mu = self.means[self.target_ids].double()
        c = torch.randint(0, len(mu), (n,), generator=gen)
        scale = (self.within ** 2 + sigma ** 2 / repeats) ** 0.5
        z = mu[c] + scale * torch.randn(n, mu.shape[1], generator=gen, dtype=torch.float64)
        return float((torch.cdist(z, mu).argmin(1) == c).double().mean())


def planted_faces(*, n_targets: int = 20, per_target: int = 40, n_aux: int = 150, per_aux: int = 6,
                  dim: int = 6, separation: float = 1.0, within: float = 1.0, gender_gap: float = 3.0,
                  primary_only: bool = False, groups: int = 1, seed: int = 0) -> Planted:
    """Planted identities: mean = gender * gender_gap * e_0 + separation * N(0, I) (identity part),
    each image = mean + within * N(0, I). Columns: identity, gender (alternating), sequence
    (``groups`` sequences per person, for grouped splits). ``primary_only`` drops the identity part."""
    gen = torch.Generator().manual_seed(seed)
    people = n_targets + n_aux
    gender = torch.arange(people) % 2
    means = torch.zeros(people, dim)
    means[:, 0] = gender.float() * gender_gap
    if not primary_only:
        means += separation * torch.randn(people, dim, generator=gen)
    ident = torch.cat([torch.arange(n_targets).repeat_interleave(per_target),
                       torch.arange(n_targets, people).repeat_interleave(per_aux)])
    rows = len(ident)
    feats = means[ident] + within * torch.randn(rows, dim, generator=gen)
    seq = torch.cat([torch.arange(per_target).repeat(n_targets), torch.arange(per_aux).repeat(n_aux)]) % groups
    names = [f"p{i:04d}" for i in range(people)]
    manifest = Manifest(root=Path("."), paths=tuple(f"{i}.png" for i in range(rows)),
                        columns={"identity": tuple(names[int(i)] for i in ident),
                                 "gender": tuple("FM"[int(gender[i])] for i in ident),
                                 "sequence": tuple(f"{names[int(i)]}-s{int(s)}" for i, s in zip(ident, seq))},
                        name="planted")
    seq_names = sorted(set(manifest.columns["sequence"]))
    lookup = {s: k for k, s in enumerate(seq_names)}
    data = FaceData(images=encode_ids(torch.arange(rows)),
                    labels={"identity": ident, "gender": gender[ident],
                            "sequence": torch.tensor([lookup[s] for s in manifest.columns["sequence"]])},
                    classes={"identity": names, "gender": ["F", "M"], "sequence": seq_names},
                    manifest=manifest, preprocess=Preprocess(size=SIZE))
    split = n_targets * per_target
    return Planted(data.subset(range(split)), data.subset(range(split, rows)), feats, means,
                   torch.arange(n_targets), within)
