"""A non-editable install carries its data files: build the wheel, install it in a fresh venv, use them.

The fresh venv gets no dependency downloads: it sees the running interpreter's site-packages through a
``.pth`` path line (appended after its own site-packages, and such a line runs no ``.pth`` of that
folder, so the editable privsplit there stays invisible).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def _run(args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(OMP_NUM_THREADS="1", PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The bin/ folder of a fresh venv holding the built wheel (no editable link to src/)."""
    pytest.importorskip("setuptools", reason="building the wheel needs setuptools in this interpreter")
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src-copy"  # build from a copy: the build leaves build/ and egg-info behind
    shutil.copytree(ROOT / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"),
                  str(src)], tmp)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    wheel = next((tmp / "dist").glob("privsplit-*.whl"))
    env_dir = tmp / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    site = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp).stdout.strip())
    (site / "zz_host_packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    inst = _run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index", str(wheel)], tmp)
    assert inst.returncode == 0, inst.stdout[-2000:] + inst.stderr[-2000:]
    return env_dir / "bin"


def test_wheel_holds_the_data_files(installed, tmp_path):
    code = ("import privsplit, pathlib; from importlib import resources as r; "
            "print(pathlib.Path(privsplit.__file__).parent); "
            "print(r.files('privsplit.report').joinpath('defaults.toml').is_file(), "
            "r.files('privsplit.runtime.proto').joinpath('grpc_predict_v2.proto').is_file())")
    out = _run([str(installed / "python"), "-c", code], tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    where, found = out.stdout.strip().splitlines()
    assert str(installed.parent) in where, f"privsplit imported from {where}, not the wheel install"
    assert found == "True True"


def test_installed_cli_reads_the_shipped_defaults(installed, tmp_path):
    code = ("from privsplit.report.pipeline import load_config; c = load_config('synthetic', quick=True); "
            "print(c['dataset'], c['epochs'], c['quick'])")
    out = _run([str(installed / "python"), "-c", code], tmp_path)
    assert out.returncode == 0 and out.stdout.split() == ["synthetic", "3", "True"], out.stderr[-2000:]
    # the console script of the wheel: an unknown table is refused by listing the shipped ones (read from the file)
    cli = _run([str(installed / "privsplit"), "reproduce", "--dataset", "nope", "--out", str(tmp_path / "r")], tmp_path)
    text = cli.stdout + cli.stderr
    assert cli.returncode != 0 and "available: lfw, ckplus, synthetic" in text, text[-2000:]
