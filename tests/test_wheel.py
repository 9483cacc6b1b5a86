"""The shipped learned optimizers are package data: a wheel built from pyproject.toml, installed into a fresh
virtualenv outside the checkout, loads them by short name from any directory."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import learned_opt

ROOT = Path(__file__).resolve().parents[1]
PRETRAINED = ROOT / "learned_opt" / "pretrained"

LOAD = """
import hashlib, learned_opt
rule = learned_opt.load("celo")
digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in rule.parameters())).hexdigest()
print(learned_opt.__file__)
print(type(rule).__name__, digest)
"""


def parameter_digest(rule) -> str:
    return hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in rule.parameters())).hexdigest()


def test_a_wheel_installed_outside_the_checkout_loads_the_shipped_rules(tmp_path):
    src = tmp_path / "src"  # a copy, so the build leaves nothing behind in the checkout
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for package in ("learned_opt", "baselines"):
        shutil.copytree(ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                    "-w", str(tmp_path / "dist"), str(src)], check=True, env=env, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("learned_opt-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {f"learned_opt/pretrained/{p.name}" for p in PRETRAINED.glob("*.pt")}
    assert shipped and shipped <= names, sorted(shipped - names)
    assert not any(n.endswith(".png") for n in names)  # the meta-loss figures stay in the repository

    # a fresh virtualenv; its dependencies (torch, ...) come from this test's environment through a .pth file,
    # which adds that folder to sys.path but runs none of its .pth files (so not this checkout's editable install)
    venv = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                    "--no-index", str(wheel)], check=True, env=env, capture_output=True, timeout=300)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = subprocess.run([str(python), "-c", LOAD], cwd=elsewhere, env={**env, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    location, loaded = proc.stdout.strip().splitlines()[-2:]
    assert Path(location).is_relative_to(venv) and not Path(location).is_relative_to(ROOT)
    reference = learned_opt.load(PRETRAINED / "celo_radial.pt")  # the checkout's file, loaded by path
    assert loaded == f"{type(reference).__name__} {parameter_digest(reference)}"
