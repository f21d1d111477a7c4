"""Packaging: ranges (not pins) for torch, the machine's pins in a constraints file, extras that do not collide,
every package listed, the service installed as ``hsrl_service``, and ``hsrl --version``."""

from __future__ import annotations

import fnmatch
import importlib.metadata
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]


def _requirements(names: list[str]) -> dict[str, Requirement]:
    return {canonicalize_name(Requirement(text).name): Requirement(text) for text in names}


CORE = _requirements(PROJECT["dependencies"])
EXTRAS = {name: _requirements(items) for name, items in PROJECT["optional-dependencies"].items()}


@pytest.mark.parametrize("name", ["torch", "torchvision"])
def test_torch_is_a_range_that_admits_other_builds(name: str) -> None:
    requirement = CORE[name]
    assert all(spec.operator not in {"==", "===", "~="} for spec in requirement.specifier), requirement
    # a user's CUDA build, an older supported release, and what this machine has
    others = {"torch": ["2.2.0", "2.5.1+cu121", "2.6.0+cu124"], "torchvision": ["0.17.0", "0.20.1+cu121"]}[name]
    for version in [*others, importlib.metadata.version(name)]:
        assert requirement.specifier.contains(Version(version), prereleases=True), (requirement, version)


def test_machine_pins_live_in_the_constraints_file_make_uses() -> None:
    constraints = (ROOT / "tools" / "machine-constraints.txt").read_text()
    pins = _requirements([line for line in constraints.splitlines() if line.strip() and not line.startswith("#")])
    assert {"torch", "torchvision"} <= set(pins)
    for name, pin in pins.items():
        assert str(pin.specifier).startswith("=="), pin
        assert CORE[name].specifier.contains(Version(str(pin.specifier)[2:])), (name, "pin outside the range")
    makefile = (ROOT / "Makefile").read_text()
    assert "-c $(CONSTRAINTS)" in makefile and "CONSTRAINTS := tools/machine-constraints.txt" in makefile


def test_faiss_comes_from_exactly_one_extra() -> None:
    assert not any(name.startswith("faiss") for name in CORE), "a core faiss could not be replaced by the gpu extra"
    assert set(EXTRAS["cpu"]) == {"faiss-cpu"} and set(EXTRAS["gpu"]) == {"faiss-gpu-cu12"}
    assert {"fastapi", "uvicorn", "prometheus-client"} <= set(EXTRAS["serve"])
    assert {"tensorboard", "matplotlib", "scikit-learn"} <= set(EXTRAS["train"])
    assert not {"tensorboard", "matplotlib", "scikit-learn"} & set(CORE), "training-only packages in the core"
    assert str(next(iter(EXTRAS["service"].values()))) == "hsrl[serve]"


def test_every_package_is_listed_and_the_service_installs_as_hsrl_service() -> None:
    settings = PYPROJECT["tool"]["setuptools"]
    listed, mapping = set(settings["packages"]), settings["package-dir"]
    assert mapping == {"hsrl_service": "service"}
    folders = {"hsrl": ROOT / "hsrl", "hsrl_service": ROOT / "service"}
    on_disk = {
        ".".join((top, *init.parent.relative_to(root).parts))
        for top, root in folders.items()
        for init in root.rglob("__init__.py")
    }
    data_only = {"hsrl.data.corpora", "hsrl_service.static"}  # folders of package data, no Python
    missing = (on_disk | data_only) ^ listed
    assert not missing, f"add new packages to [tool.setuptools] packages: {sorted(missing)}"
    assert set(settings["package-data"]) >= data_only
    # Every shipped corpus file matches a package-data pattern, WordNet's licence included (its terms ask that the
    # notice travel with every copy of the data).
    corpora = [p.name for p in (ROOT / "hsrl" / "data" / "corpora").iterdir() if p.is_file()]
    patterns = settings["package-data"]["hsrl.data.corpora"]
    assert "WORDNET_LICENSE" in corpora and "wordnet_glosses.jsonl.gz" in corpora
    assert all(any(fnmatch.fnmatch(name, pattern) for pattern in patterns) for name in corpora)
    assert not any(name == "service" or name.startswith("service.") for name in listed)
    import hsrl_service.app

    assert Path(hsrl_service.app.__file__).resolve().parent == ROOT / "service"


def test_version_flag(capsys: pytest.CaptureFixture[str]) -> None:
    from hsrl.cli import main

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"hsrl {importlib.metadata.version('hsrl')}"


def _fake_distribution(site: Path, name: str, version: str) -> None:
    info = site / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "INSTALLER").write_text("pip\n")


def test_pip_install_keeps_a_users_other_torch(tmp_path: Path) -> None:
    """``pip install .`` into an environment whose torch is another (CUDA) build plans to install hsrl only.

    The environment is a bare venv that sees this venv's packages through a ``.pth`` file, with stand-in CUDA
    builds (``+cu128``) of this venv's torch and torchvision releases placed ahead of them. ``--no-index`` makes
    any plan to replace torch fail instead of downloading it. The stand-ins carry this venv's release numbers, not
    a fixed old one: our dependencies raise their torch floors over time (accelerate 1.16 needs torch>=2.6), and
    what this test guards is that *hsrl* never replaces a compatible user build, not which floor others pick.
    """
    venv = tmp_path / "user-env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    for name in ("torch", "torchvision"):
        release = importlib.metadata.version(name).split("+")[0]
        _fake_distribution(site, name, f"{release}+cu128")
    (site / "zz-hsrl-venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    report = tmp_path / "report.json"
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--dry-run", "--no-index",
         "--no-build-isolation", "--quiet", "--report", str(report), str(ROOT)],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    install = json.loads(report.read_text())["install"]
    planned = {item["metadata"]["name"]: item["metadata"]["version"] for item in install}
    assert planned == {"hsrl": importlib.metadata.version("hsrl")}, planned
