"""Dataset loaders: each returns a :class:`~privsplit.data.manifest.Manifest`.

* ``lfw``: the ``lfw_gender`` layout (``images/<Name>/<Name>_NNNN.jpg`` + ``labels.csv`` with
  identity and gender). :func:`download_lfw` builds that layout from the official archive and the
  published gender name lists, for users with internet.
* ``ckplus``: the ``ckplus48`` layout (48x48 grayscale PNGs; identity = subject, 7 expressions).
* ``celeba``: CelebA's standard layout (``img_align_celeba/``, ``identity_CelebA.txt``,
  ``list_attr_celeba.txt``); gender comes from the ``Male`` attribute.
* ``csv``: any folder of images plus a CSV (``path`` column + label columns).
* ``synthetic``: procedurally generated faces (no download), generated into the cache folder.

They are registered in :data:`LOADERS` (a :class:`privsplit.registry.Registry`); add your own dataset,
from outside the package, with :func:`register_loader`, and ``--dataset NAME`` / :func:`load_manifest`
find it::

    from privsplit.data import Manifest, register_loader

    @register_loader("mydata")
    def mydata(root=None) -> Manifest:       # root: --data-root, or None
        return Manifest.from_csv("/data/mydata/labels.csv", name="mydata")
"""
from __future__ import annotations

import tarfile
import urllib.request
from collections.abc import Callable
from typing import Any
from pathlib import Path

from privsplit.config import cache_dir, data_root
from privsplit.data.errors import DataError
from privsplit.data.manifest import Manifest
from privsplit.registry import Registry

__all__ = [
    "LOADERS", "register_loader", "load_manifest", "lfw", "ckplus", "celeba", "csv_manifest", "synthetic",
    "build_lfw_labels", "download_lfw", "default_dataset",
]

LFW_URL = "http://vis-www.cs.umass.edu/lfw/lfw-deepfunneled.tgz"
LFW_GENDER_URLS = {
    "male": "https://raw.githubusercontent.com/Lukeli0425/Gender-Classification/master/male_names.txt",
    "female": "https://raw.githubusercontent.com/Lukeli0425/Gender-Classification/master/female_names.txt",
}
LFW_CROP = 0.6  # deep-funneled faces sit in the middle of 250x250 frames


def _folder(root: str | Path | None, name: str) -> Path:
    if root is not None:
        path = Path(root)
    else:
        base = data_root()
        if base is None:
            raise DataError(f"no data folder found for '{name}': set PRIVSPLIT_DATA to the folder holding "
                            f"{name}/, pass --data-root, or use --dataset synthetic")
        path = base / name
    if not (path / "labels.csv").is_file():
        raise DataError(f"{path}/labels.csv not found: expected the '{name}' layout (see ../shared/data/README.md)")
    return path


def lfw(root: str | Path | None = None) -> Manifest:
    """LFW deep-funneled with gender labels (columns: identity, identity_idx, gender, gender_source)."""
    return Manifest.from_csv(_folder(root, "lfw_gender") / "labels.csv", name="lfw", crop=LFW_CROP)


def ckplus(root: str | Path | None = None) -> Manifest:
    """CK+ 48x48 peak frames (columns: identity, expression, sequence, frame)."""
    return Manifest.from_csv(_folder(root, "ckplus48") / "labels.csv", name="ckplus")


def csv_manifest(csv_path: str | Path, *, root: str | Path | None = None, path_column: str = "path",
                 crop: float = 1.0) -> Manifest:
    """Any folder of images described by a CSV."""
    return Manifest.from_csv(csv_path, root=root, path_column=path_column, crop=crop)


def celeba(root: str | Path) -> Manifest:
    """CelebA standard layout -> columns identity, gender (M/F from ``Male``) and all 40 attributes."""
    root = Path(root)
    ident_file, attr_file = root / "identity_CelebA.txt", root / "list_attr_celeba.txt"
    for f in (ident_file, attr_file, root / "img_align_celeba"):
        if not f.exists():
            raise DataError(f"CelebA layout incomplete: {f} not found")
    ident = dict(line.split()[:2] for line in ident_file.read_text().splitlines() if line.strip())
    lines = [ln for ln in attr_file.read_text().splitlines() if ln.strip()]
    names = lines[1].split()
    if "Male" not in names:
        raise DataError(f"{attr_file}: no 'Male' attribute in header line")
    paths, cols = [], {"identity": [], "gender": [], **{n: [] for n in names}}
    for ln in lines[2:]:
        parts = ln.split()
        fname, vals = parts[0], parts[1:]
        if len(vals) != len(names):
            raise DataError(f"{attr_file}: row for {fname} has {len(vals)} attributes, header has {len(names)}")
        if fname not in ident:
            raise DataError(f"{ident_file}: no identity for {fname}")
        paths.append(f"img_align_celeba/{fname}")
        cols["identity"].append(ident[fname])
        attrs = dict(zip(names, vals))
        cols["gender"].append("M" if attrs["Male"] == "1" else "F")
        for n in names:
            cols[n].append(attrs[n])
    return Manifest(root=root, paths=tuple(paths), columns={k: tuple(v) for k, v in cols.items()},
                    name="celeba", crop=0.8)


def synthetic(root: str | Path | None = None, **options: int) -> Manifest:
    """Procedural faces generated (once, then cached) under ``root`` or the cache folder.

    Default: 120 identities x 20 images at 64 px (20 identities become the attack split).
    """
    from privsplit.data.synthetic import generate_synthetic_faces

    options = {"n_identities": 120, "images_per_identity": 20, **options}
    return generate_synthetic_faces(Path(root) if root else cache_dir() / "synthetic", **options)


def build_lfw_labels(folder: str | Path, male_names: str | Path, female_names: str | Path) -> Manifest:
    """Write ``folder/labels.csv`` for an extracted LFW (``folder/images/<Name>/...``) and gender lists.

    Names listed in both lists are labelled F (the female list was curated last); a person's unlisted
    images take the gender of the person's listed ones; otherwise the gender is left empty.
    """
    folder = Path(folder)
    read = lambda p: {ln.strip() for ln in Path(p).read_text().splitlines() if ln.strip()}  # noqa: E731
    male, female = read(male_names), read(female_names)
    files = sorted((folder / "images").glob("*/*.jpg"))
    if not files:
        raise DataError(f"no images under {folder / 'images'}/<Name>/*.jpg")
    people = sorted({f.parent.name for f in files})
    idx = {p: i for i, p in enumerate(people)}
    by_person: dict[str, set[str]] = {}
    rows = []
    for f in files:
        g = "F" if f.name in female else "M" if f.name in male else ""
        by_person.setdefault(f.parent.name, set()).add(g) if g else None
        rows.append((f.relative_to(folder).as_posix(), f.parent.name, g))
    cols: dict[str, list[str]] = {"identity": [], "identity_idx": [], "gender": [], "gender_source": []}
    for _, person, g in rows:
        inferred = by_person.get(person, set())
        final = g or (next(iter(inferred)) if len(inferred) == 1 else "")
        cols["identity"].append(person)
        cols["identity_idx"].append(str(idx[person]))
        cols["gender"].append(final)
        cols["gender_source"].append("lists" if g else ("inferred from same person" if final else ""))
    manifest = Manifest(root=folder, paths=tuple(r[0] for r in rows), columns={k: tuple(v) for k, v in cols.items()},
                        name="lfw", crop=LFW_CROP)
    manifest.to_csv(folder / "labels.csv")
    return manifest


def download_lfw(dest: str | Path) -> Manifest:  # pragma: no cover - needs internet
    """Download LFW deep-funneled and the gender lists, then build the ``lfw_gender`` layout."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    archive = dest / "lfw-deepfunneled.tgz"
    if not archive.exists():
        urllib.request.urlretrieve(LFW_URL, archive)
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    extracted = dest / "lfw-deepfunneled"
    if extracted.exists() and not (dest / "images").exists():
        extracted.rename(dest / "images")
    for which, url in LFW_GENDER_URLS.items():
        target = dest / f"{which}_names.txt"
        if not target.exists():
            urllib.request.urlretrieve(url, target)
    return build_lfw_labels(dest, dest / "male_names.txt", dest / "female_names.txt")


#: a loader takes the data root (``--data-root``, or ``None`` for the default place) and returns a Manifest
Loader = Callable[..., Manifest]
#: dataset name -> loader, in the order menus list them
LOADERS: Registry[Loader] = Registry("dataset", help_ref="help(privsplit.data.loaders)")
for _name, _loader in (("lfw", lfw), ("ckplus", ckplus), ("celeba", celeba), ("csv", csv_manifest),
                       ("synthetic", synthetic)):
    LOADERS.register(_name, _loader)


def register_loader(name: str, loader: Loader | None = None, *, replace: bool = False) -> Any:
    """Register ``loader(root) -> Manifest`` as dataset ``name`` (a decorator when ``loader`` is omitted).

    Registering a taken name raises :class:`~privsplit.registry.RegistryError` unless ``replace=True``.
    """
    return LOADERS.register(name, replace=replace) if loader is None else LOADERS.register(name, loader,
                                                                                           replace=replace)


def load_manifest(name: str, root: str | Path | None = None) -> Manifest:
    """Load a dataset by registry name (``lfw``, ``ckplus``, ``celeba``, ``synthetic``, or one added with
    :func:`register_loader`) or CSV path."""
    if name.endswith(".csv"):
        return csv_manifest(name, root=root)
    if name not in LOADERS:
        raise DataError(f"unknown dataset '{name}'; choose one of {', '.join(LOADERS)} or give a .csv manifest")
    if name == "csv":
        raise DataError("dataset 'csv' needs the CSV path itself: --dataset path/to/labels.csv")
    return LOADERS.get(name)(root)


def default_dataset() -> tuple[str, str]:
    """``("lfw", why)`` when LFW is present, else ``("synthetic", why)``."""
    base = data_root()
    if base is not None and (base / "lfw_gender" / "labels.csv").is_file():
        return "lfw", f"using LFW from {base / 'lfw_gender'}"
    return "synthetic", "no LFW found (set PRIVSPLIT_DATA); using the built-in SYNTHETIC faces"
