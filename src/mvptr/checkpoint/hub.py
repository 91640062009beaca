"""Model directories on the Hugging Face Hub: a repo id ("org/name") resolved to a directory of
huggingface_hub's cache (``snapshot_download``: its cache, ``revision``, ``HF_HUB_OFFLINE=1``,
``local_files_only``), and a model directory uploaded to a repo (``create_repo`` + ``upload_folder``).

A name that is an existing local path is always that directory; only a missing path of the form
``namespace/name`` is looked up on the Hub.
"""

from __future__ import annotations

import re
from pathlib import Path

from huggingface_hub import HfApi, constants, snapshot_download
from huggingface_hub.utils import LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

from ..core.errors import ConfigError, HubError
from ..core.version import __version__

__all__ = ["is_hub_id", "check_repo_id", "resolve_model_dir", "upload_model_dir"]

# the Hub's repo ids: "namespace/name", letters, digits, "-", "_" and "." (not first, no "--" or "..")
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}")
LOCAL_ONLY = "pass a local model directory"


def is_hub_id(name: str) -> bool:
    return bool(HUB_ID.fullmatch(name)) and "--" not in name and ".." not in name and not name.endswith(".")


def check_repo_id(repo_id) -> str:
    if not isinstance(repo_id, str) or not is_hub_id(repo_id):
        raise ConfigError(f"repo_id: expected a Hugging Face Hub repo id (namespace/name), got {repo_id!r}")
    return repo_id


def resolve_model_dir(name_or_path: str | Path, revision: str | None = None, cache_dir: str | Path | None = None,
                      local_files_only: bool = False, token: str | bool | None = None) -> Path:
    """The directory of ``name_or_path``: itself when it exists (or is no Hub id: its loader then
    says what is missing), else the snapshot of the Hub repo of that id in the cache, downloaded
    when downloads are allowed. A repo that cannot be had is a :class:`HubError` saying what to do."""
    path = Path(name_or_path)
    hub = isinstance(name_or_path, str) and not path.exists() and is_hub_id(name_or_path)
    if not hub:
        given = [k for k, v in (("revision", revision), ("cache_dir", cache_dir), ("token", token)) if v is not None]
        if given:
            raise ConfigError(f"{name_or_path}: a local path takes no {', '.join(given)} (a Hugging Face Hub repo "
                              "id, namespace/name, does); leave it out")
        return path
    repo = name_or_path
    where = f"revision {revision!r} of " if revision else ""
    try:
        return Path(snapshot_download(repo, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only,
                                      token=token, library_name="mvptr", library_version=__version__))
    except RevisionNotFoundError:
        raise HubError(f"{repo}: the Hugging Face Hub repo has no revision {revision!r}; pass one of its branches, "
                       "tags or commits") from None
    except RepositoryNotFoundError:
        raise HubError(f"{repo}: no local directory of that name, and no Hugging Face Hub model repo this account "
                       f"can read (check the id; for a private repo log in with `hf auth login` or pass token=), "
                       f"or {LOCAL_ONLY}") from None
    except LocalEntryNotFoundError:
        cache = cache_dir or constants.HF_HUB_CACHE
        raise HubError(f"{repo}: no local directory of that name, and {where}the Hugging Face Hub repo {repo} is not "
                       f"in the cache {cache} and cannot be downloaded now (HF_HUB_OFFLINE=1, local_files_only=True "
                       f"or no network): go online (unset HF_HUB_OFFLINE) to download it once, or "
                       f"{LOCAL_ONLY}") from None
    except OSError as err:  # the Hub's HTTP errors (server errors, refused tokens)
        raise HubError(f"{repo}: the Hugging Face Hub did not give the model ({_first_line(err)}); try again "
                       f"later, or {LOCAL_ONLY}") from None


def upload_model_dir(folder: str | Path, repo_id: str, private: bool | None = None, token: str | bool | None = None,
                     commit_message: str = "Upload mvptr model", revision: str | None = None) -> str:
    """Upload the model directory ``folder`` to the Hub model repo ``repo_id`` (created when it
    does not exist); returns the commit's URL."""
    check_repo_id(repo_id)
    api = HfApi(token=token, library_name="mvptr", library_version=__version__)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        commit = api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model",
                                   commit_message=commit_message, revision=revision)
    except OSError as err:  # the Hub's HTTP errors, offline mode, a missing token
        raise HubError(f"{repo_id}: the Hugging Face Hub refused the upload ({_first_line(err)}); log in with "
                       f"`hf auth login` or pass token= with write access to {repo_id.split('/')[0]}") from None
    return str(getattr(commit, "commit_url", commit))


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__
