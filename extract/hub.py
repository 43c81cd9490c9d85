"""The Hugging Face Hub: pushing a finished run, and reading a run's files from its repo or its folder.

A pushed repo is the output folder rearranged so that plain transformers loads it: the sparse model
and tokenizer at the root (`from_pretrained(repo_id)`), the model card as README.md, and the run's
recipe, report, circuits, drawings and ablation means beside them. The push is one commit, so the
Hub never holds half a run; a failed push changes nothing locally, and a rerun sends only what the
Hub does not have yet (huggingface_hub skips unchanged files and uploaded LFS objects).

The token comes from huggingface_hub's own sources (HF_TOKEN, `hf auth login`); this module never
reads, prints or stores it.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from extract.atomic import read_json
from extract.errors import MissingFileError, UserError
from extract.paths import CIRCUITS_DIRNAME, MODEL_DIRNAME
from extract.recipe import HubConfig

log = logging.getLogger(__name__)

RUN_FILES = ("recipe.yaml", "report.json", "report.md", "report.html", "training.png", "train_log.jsonl")
CARD_FILE = "README.md"


class PushError(UserError, RuntimeError):
    """A push that could not finish; the message says which step failed and that a rerun completes it."""


def is_hub_id(name: str) -> bool:
    """'namespace/name' that is not a local path."""
    return name.count("/") == 1 and not name.startswith((".", "/", "~")) and not Path(name).exists()


def hub_file(repo_id: str, filename: str, revision: str | None = None) -> Path | None:
    """A file of a Hub repo, downloaded to the cache; None when the repo or the file is not there (or
    the Hub cannot be reached)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision))
    except (OSError, ValueError, EntryNotFoundError):
        return None


class RunFiles:
    """The files of a finished run, read from its output folder or from the Hub repo it was pushed to.

    The two layouts differ only in where the sparse model is: OUTPUT_DIR/model, or the repo's root."""

    def __init__(self, repo_or_dir: str | Path, revision: str | None = None):
        self.where, self.revision = str(repo_or_dir), revision
        self.local = Path(repo_or_dir).is_dir()
        if not self.local and not is_hub_id(self.where):
            raise MissingFileError(f"{self.where}: neither a run's output folder nor a Hub repo id (namespace/name)")

    def path(self, name: str) -> Path:
        """A local path to the run's file `name` (e.g. circuits/TASK.sparse.json); FileNotFoundError if absent."""
        found = Path(self.where) / name if self.local else hub_file(self.where, name, self.revision)
        if found is None or not found.is_file():
            where = self.where + (f"@{self.revision}" if self.revision else "")
            raise MissingFileError(f"{where}: has no {name}")
        return found

    def model_file(self, name: str) -> Path:
        """A local path to a file of the run's model folder (e.g. bridges.json)."""
        if self.local:
            folder = Path(self.where) / MODEL_DIRNAME
            return self.path(f"{MODEL_DIRNAME}/{name}" if folder.is_dir() else name)
        return self.path(name)

    def model_source(self) -> str:
        """What `from_pretrained` takes to load the run's sparse model."""
        if self.local:
            folder = Path(self.where) / MODEL_DIRNAME
            return str(folder if folder.is_dir() else Path(self.where))
        return self.where


def finished_report(out: Path) -> dict:
    """The report of a finished run; PushError when there is none yet."""
    path = Path(out) / "report.json"
    if not path.is_file():
        raise PushError(f"{out}: no report.json; only a finished run can be pushed (run the report stage first)")
    return read_json(path, "delete it and rerun the command with --stage report before pushing")


def files_to_push(out: Path) -> dict[str, Path]:
    """{path in the repo: local file} for a finished output folder (finished_report checks that): the
    model folder's files at the root, the run's files, and the circuits (files, drawings, and the
    means they name). Checkpoints, the resume cache and scratch files stay local."""
    out = Path(out)
    files: dict[str, Path] = {}
    model_dir = out / MODEL_DIRNAME
    if model_dir.is_dir():
        files.update({p.name: p for p in sorted(model_dir.iterdir())
                      if p.is_file() and not p.name.startswith(".") and p.name != CARD_FILE})
    files.update({name: out / name for name in RUN_FILES if (out / name).is_file()})
    circuits = out / CIRCUITS_DIRNAME
    if circuits.is_dir():
        for path in sorted(circuits.iterdir()):
            if path.is_file() and not path.name.startswith(".") and path.suffix in (".json", ".png"):
                files[f"{CIRCUITS_DIRNAME}/{path.name}"] = path
                if path.suffix == ".json" and path.name != "circuits.json":
                    means = json.loads(path.read_text()).get("means_file")
                    if means and (circuits / means).is_file():
                        files[f"{CIRCUITS_DIRNAME}/{means}"] = circuits / means
    return files


def push_run(out: Path, hub: HubConfig, card: str) -> str:
    """Push the finished run in `out` to `hub.repo_id` as one commit with `card` as README.md; returns
    the commit id. Raises PushError, naming the step that failed, on any failure."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"):
        raise PushError("HF_HUB_OFFLINE is set in the environment: unset it to push")
    files = files_to_push(out)
    repo, revision = hub.repo_id, hub.revision or "main"
    api = HfApi()
    step = "creating the repository"
    try:
        api.create_repo(repo, private=hub.private, exist_ok=True)
        if revision != "main":
            step = f"creating the branch {revision}"
            api.create_branch(repo, branch=revision, exist_ok=True)
        step = "reading the repository"
        head = api.repo_info(repo, revision=revision).sha
        stale = [p for p in api.list_repo_files(repo, revision=revision)
                 if p.startswith(f"{CIRCUITS_DIRNAME}/") and p not in files]
        operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path)) for name, path in files.items()]
        operations.append(CommitOperationAdd(path_in_repo=CARD_FILE, path_or_fileobj=card.encode()))
        operations += [CommitOperationDelete(path_in_repo=p) for p in stale]
        size = sum(p.stat().st_size for p in files.values())
        log.info("pushing %d files (%.1f MB) to %s@%s", len(operations), size / 1e6, repo, revision)
        step = "uploading the files and committing"
        commit = api.create_commit(repo, operations, commit_message=f"extract: push {out.name}", revision=revision)
    except (HfHubHTTPError, OSError, RuntimeError, ValueError) as error:
        cause = f" ({error.__cause__})" if error.__cause__ is not None else ""
        raise PushError(f"push to {repo}@{revision} failed while {step}: {error}{cause}\n"
                        "Nothing local was changed; rerun the same command to finish the push "
                        "(files the Hub already has are not sent again).") from None
    if commit.oid == head:
        log.info("nothing to push: %s@%s already holds this run (commit %s)", repo, revision, head[:12])
    else:
        log.info("pushed %s@%s: commit %s", repo, revision, commit.oid[:12])
    return commit.oid
