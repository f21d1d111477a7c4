"""Publishing model folders to the Hugging Face Hub.

A recipe's ``--push-to-hub ORG/NAME`` is checked when the flags are parsed (a valid repository id, and
not offline: ``HF_HUB_OFFLINE=1`` ends the run before training, in one line), and after training the
saved model folder, with its card (:mod:`hsrl.models.card`), is uploaded by :func:`push_folder` through
``huggingface_hub.HfApi`` (``create_repo(exist_ok=True)`` then ``upload_folder``). The token is
huggingface_hub's own: ``HF_TOKEN`` or ``huggingface-cli login``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from hsrl.errors import first_line

__all__ = [
    "check_push_target",
    "hub_model_errors",
    "hub_offline",
    "looks_like_hub_id",
    "publish_run",
    "push_folder",
    "push_to_hub_field",
]

#: Never uploaded: hsrl's temporary and hidden files (half-written folders, ``.old-*`` copies).
IGNORED = [".*", "**/.*"]


def hub_offline() -> bool:
    """Whether the user asked huggingface_hub to stay offline (``HF_HUB_OFFLINE``), read now."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def looks_like_hub_id(name: str) -> bool:
    """``org/name``: two non-empty parts, not a relative or home path."""
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "~"))


@contextlib.contextmanager
def hub_model_errors(name: str) -> Iterator[bool]:
    """Load a model from the Hub inside this block; its errors become one line each.

    Yields whether the user asked to stay offline (``HF_HUB_OFFLINE``), to pass on as
    ``local_files_only``.

    Raises:
        ValueError: an invalid id, an id missing from the cache offline, an unreachable Hub, or a
            repository the Hub does not have.
    """
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalEntryNotFoundError

    offline = hub_offline()
    try:
        yield offline
    except HFValidationError as error:
        raise ValueError(f"--model {name}: not a valid Hub id ({first_line(error)})") from None
    except LocalEntryNotFoundError:
        if offline:
            raise ValueError(f"--model {name}: {name} is not in the local Hugging Face cache and "
                             "HF_HUB_OFFLINE=1; download it once online (unset HF_HUB_OFFLINE) or pass a local "
                             "folder") from None  # fmt: skip
        raise ValueError(f"--model {name}: cannot reach the Hugging Face Hub and it is not cached") from None
    except (HfHubHTTPError, OSError) as error:
        raise ValueError(f"--model {name}: not found on the Hugging Face Hub ({first_line(error)})") from None


def check_push_target(repo_id: str | None) -> None:
    """Check ``--push-to-hub`` before any training: a valid ``org/name`` and the Hub reachable by policy.

    Raises:
        ValueError: one line saying what is wrong.
    """
    if repo_id is None:
        return
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ValueError(f"--push-to-hub {repo_id!r}: not a Hub repository id ({first_line(error)})") from None
    if hub_offline():
        raise ValueError(f"--push-to-hub {repo_id}: HF_HUB_OFFLINE=1 forbids uploads; unset it (or drop "
                         "--push-to-hub and upload OUTPUT/model later with `hf upload`)")  # fmt: skip


def push_to_hub_field() -> Any:
    """The ``push_to_hub`` dataclass field every recipe config shares (checked by ``parse_config``)."""
    return dataclasses.field(default=None, metadata={
        "help": "after training, upload the model folder (with its card) to this Hub repository, e.g. org/name",
        "check": check_push_target,
    })  # fmt: skip


def push_folder(
    folder: str | os.PathLike[str],
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str | None = None,
    endpoint: str | None = None,
) -> str:
    """Create ``repo_id`` if needed and upload every file of ``folder`` to it; returns the commit URL.

    Hidden files (hsrl's temporaries) are left out. ``private=None`` keeps the Hub's default (or the
    existing repository's visibility). ``endpoint``: another Hub than ``HF_ENDPOINT`` (huggingface.co).

    Raises:
        FileNotFoundError: ``folder`` does not exist.
        ValueError: a bad repository id, offline mode, or the Hub refused (one line).
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no model folder {folder} to push")
    check_push_target(repo_id)
    api = HfApi(endpoint=endpoint, token=token)
    try:
        with _default_endpoint(endpoint):
            api.create_repo(repo_id, private=private, exist_ok=True)
            commit = api.upload_folder(
                repo_id=repo_id, folder_path=folder,
                commit_message=commit_message or f"Upload {folder.name} with hsrl", ignore_patterns=IGNORED,
            )  # fmt: skip
    except (HfHubHTTPError, OSError) as error:
        raise ValueError(f"--push-to-hub {repo_id}: the upload failed ({first_line(error)})") from None
    return str(getattr(commit, "commit_url", commit))


@contextlib.contextmanager
def _default_endpoint(endpoint: str | None) -> Iterator[None]:
    """Make ``endpoint`` huggingface_hub's default while uploading: hub < 1 parses the commit URL the server returns
    against ``constants.ENDPOINT``, not the api's endpoint, and fails on any other Hub (hub >= 1 does not need this)."""
    if endpoint is None:
        yield
        return
    from huggingface_hub import constants

    previous, constants.ENDPOINT = constants.ENDPOINT, endpoint.rstrip("/")
    try:
        yield
    finally:
        constants.ENDPOINT = previous


def publish_run(
    run_dir: str | os.PathLike[str],
    *,
    kind: Literal["text", "image"],
    push_to_hub: str | None = None,
    dataset: str | None = None,
    usage: str | None = None,
) -> int:
    """After a recipe run: fill ``run_dir/model/README.md`` from ``run_dir/metrics.json`` and, with
    ``push_to_hub``, upload the folder. Returns an exit status (0, or 1 after one line on stderr when
    the upload failed; the model stays on disk)."""
    from hsrl.models.card import write_run_card

    model = Path(run_dir) / "model"
    write_run_card(run_dir, kind=kind, dataset=dataset, repo_id=push_to_hub, usage=usage)
    if push_to_hub is None:
        return 0
    try:
        url = push_folder(model, push_to_hub)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}; the model stays in {model}", file=sys.stderr)
        return 1
    print(f"pushed {model} to https://huggingface.co/{push_to_hub} ({url})")
    return 0
