"""Safe output folders: every command that writes results goes through [`staged_output`].

A run writes into a fresh hidden sibling of its target (`.<name>.staging-<random>`), holds a lock on the target
(`.<name>.lock`, so a second run into the same folder fails at once instead of mixing its files with the first's)
and only publishes when it completes: the staging folder replaces the target in two renames, the earlier results
set aside in `.<name>.old-<random>` in between. A failed or killed run leaves the previous results untouched. The
staging and aside folders carry an ownership marker (`OWNER_MARKER`, holding the folder's own name): only folders
with it are ever cleaned up, and an aside folder holding the only copy of earlier results is moved back into place
(or kept), never deleted. A target is only ever replaced when it is empty or was written by an earlier
run of this project (its `.referformer-output.json` manifest lists every file in it): files of a user are never
deleted. A target that is, or contains, one of the run's inputs is refused. Folders and files are created with the
permissions the umask gives (never the 0700/0600 of `tempfile`).
"""

import errno
import fcntl
import json
import logging
import os
import secrets
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path


MANIFEST_NAME = ".referformer-output.json"
OWNER_MARKER = ".referformer-scratch"  # in the staging and aside folders this project creates; holds the folder's name
ALL_ENTRIES = "all"  # `units` value: publish every top-level entry of the staging folder into the target
# Where an aside folder keeps what a publish moved out of the target: the whole target, or the replaced entries.
ASIDE_TARGET, ASIDE_ENTRIES = "target", "entries"

logger = logging.getLogger(__name__)


class OutputFolderError(ValueError):
    """An output folder that cannot be written safely; the message says why and what to do."""


def current_umask() -> int:
    """The process umask (read without changing it for longer than two system calls)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def make_sibling_dir(path: Path, tag: str) -> Path:
    """Creates and returns a new hidden folder `.<name>.<tag>-<random>` next to `path`, with umask permissions,
    marked as this project's ([`OWNER_MARKER`]); call [`disown_sibling_dir`] before moving it into place."""
    while True:
        candidate = path.parent / f".{path.name}.{tag}-{secrets.token_hex(4)}"
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        (candidate / OWNER_MARKER).write_text(candidate.name, encoding="utf-8")
        return candidate


def disown_sibling_dir(folder: Path) -> None:
    """Removes the ownership marker of a folder made by [`make_sibling_dir`], before it becomes a result folder."""
    (folder / OWNER_MARKER).unlink()


def _owned(folder: Path) -> bool:
    """Whether `folder` was created by [`make_sibling_dir`] under this very name (a renamed copy is not)."""
    try:
        return (folder / OWNER_MARKER).read_text(encoding="utf-8") == folder.name
    except (OSError, UnicodeDecodeError):
        return False


def temporary_sibling_file(path: Path) -> Path:
    """A new empty file next to `path` (same suffix) with the permissions an ordinary new file gets."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.fchmod(handle, 0o666 & ~current_umask())
    os.close(handle)
    return Path(temporary)


def write_text_atomically(path: Path, text: str) -> None:
    """Writes `text` to `path` through a temporary sibling and a rename (the file is complete or absent)."""
    temporary = temporary_sibling_file(path)
    try:
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _files_under(path: Path, root: Path | None = None) -> set[str]:
    """The files of `path` (itself if it is a file), relative to `root` (default `path`), without the manifest."""
    files = [path] if path.is_file() else [child for child in path.rglob("*") if not child.is_dir()]
    return {file.relative_to(root or path).as_posix() for file in files} - {MANIFEST_NAME}


def _manifest_files(folder: Path) -> set[str] | None:
    try:
        return set(json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8"))["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _overlaps(path: Path, inputs) -> Path | None:
    """The first input that is `path` or lies inside it."""
    resolved = path.resolve()
    for item in inputs:
        if item is None:
            continue
        item = Path(item)
        if item.exists() and (item.resolve() == resolved or resolved in item.resolve().parents):
            return item
    return None


def _replace_hint(option: str | None) -> str:
    return f"pass {option} to replace it" if option else "choose a new output folder"


def check_output_target(target, overwrite: bool, inputs=(), option: str | None = "--overwrite", units=None) -> None:
    """Raises an [`OutputFolderError`] (or `FileExistsError`) unless `target` can receive this run's results.

    Refused: a target replaced as a whole (`units=None`) that is a symbolic link (the link would be replaced, not its
    folder); a target that exists and is not a folder; a target (or, with `units`, one of those sub-paths) that is
    or contains one of `inputs`; a non-empty target without `overwrite`; and, with `overwrite`, a non-empty target
    holding files an earlier run of this project did not write (checked against its manifest).
    """
    target = Path(target)
    if units is None and target.is_symlink():
        raise OutputFolderError(
            f"The output folder {target} is a symbolic link, which publishing would replace; give the folder it points "
            "to, or another."
        )
    if target.exists() and not target.is_dir():
        raise OutputFolderError(f"The output path {target} exists and is not a folder.")
    for path in [target] if units in (None, ALL_ENTRIES) else [target / unit for unit in units]:
        clash = _overlaps(path, inputs)
        if clash is not None:
            raise OutputFolderError(
                f"The output folder {path} is or contains the input {clash}; choose another output folder."
            )
    if not target.is_dir() or not any(target.iterdir()):
        return
    if units not in (None, ALL_ENTRIES):
        existing = [unit for unit in units if (target / unit).exists()]
        if not existing:
            return
        if not overwrite:
            raise FileExistsError(f"{target / existing[0]} already exists; {_replace_hint(option)}.")
        paths = [target / unit for unit in existing]
    else:
        if not overwrite:
            raise FileExistsError(f"The output folder {target} exists and is not empty; {_replace_hint(option)}.")
        if units == ALL_ENTRIES:
            return  # the caller accepted that same-named entries are replaced; nothing else is touched
        paths = [target]
    written = _manifest_files(target) or set()
    for path in paths:
        foreign = sorted(_files_under(path, target) - written)
        if foreign:
            raise OutputFolderError(
                f"{target} holds files this project did not write (e.g. {foreign[0]}); {option} only replaces earlier "
                "results: move those files away or choose another output folder."
            )


@contextmanager
def _lock(target: Path):
    """Holds an exclusive lock on `.<name>.lock` next to `target`; fails at once if another run holds it."""
    lock_path = target.parent / f".{target.name}.lock"
    handle = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            raise OutputFolderError(
                f"Another run is writing to {target} (it holds {lock_path}); wait for it or choose another output "
                "folder."
            ) from None
        try:
            same_file = os.stat(lock_path).st_ino == os.fstat(handle).st_ino
        except FileNotFoundError:
            same_file = False
        if not same_file:  # the previous holder removed the lock file between our open and our lock
            raise OutputFolderError(f"Another run has just written to {target}; run again to replace its results.")
        try:
            yield
        finally:
            lock_path.unlink(missing_ok=True)  # still locked: a run that opened it meanwhile sees it is stale
    finally:
        os.close(handle)


def _apply_umask(folder: Path) -> None:
    """Gives everything under `folder` the permissions the umask gives new files and folders (some writers, e.g.
    safetensors, create their files 0600)."""
    mask = current_umask()
    for path in [folder, *folder.rglob("*")]:
        if not path.is_symlink():
            path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


def _recover_stale_siblings(target: Path) -> None:
    """Cleans up after killed runs of ours (called under the lock). Only folders carrying this project's ownership
    marker are touched: staging folders are removed; an aside folder whose target is missing (a run killed between
    the two renames of its publish) is moved back into place; an aside folder holding replaced entries the target
    lacks is kept; other aside folders are removed."""
    prefixes = (f".{target.name}.staging-", f".{target.name}.old-")
    for stale in target.parent.iterdir():
        if not stale.name.startswith(prefixes) or stale.is_symlink() or not stale.is_dir() or not _owned(stale):
            continue
        moved_target, moved_entries = stale / ASIDE_TARGET, stale / ASIDE_ENTRIES
        if moved_target.is_dir() and not target.exists():
            os.rename(moved_target, target)
            logger.warning(f"restored the earlier results of {target} that an interrupted run had left in {stale}")
        elif moved_entries.is_dir() and any(not (target / name).exists() for name in _files_under(moved_entries)):
            logger.warning(f"kept {stale}: it holds the only copy of entries of {target} an interrupted run replaced")
            continue
        shutil.rmtree(stale)


def _publish_folder(staging: Path, target: Path) -> None:
    """Replaces `target` by `staging`: the old target is moved into an aside folder and deleted once the new one is
    in place."""
    aside = None
    if target.exists():
        aside = make_sibling_dir(target, "old")
        os.rename(target, aside / ASIDE_TARGET)
    disown_sibling_dir(staging)
    try:
        os.rename(staging, target)
    except OSError:
        if aside is not None:
            os.rename(aside / ASIDE_TARGET, target)
        raise
    if aside is not None:
        shutil.rmtree(aside)


def _publish_entries(staging: Path, target: Path, units: list[str]) -> None:
    """Moves each unit of `staging` into `target`, replacing same-named entries; `config.json` (what makes a model
    folder loadable) leaves first and arrives last, so a killed publish never looks like a complete model."""
    target.mkdir(parents=True, exist_ok=True)
    aside = make_sibling_dir(target, "old")
    for unit in sorted(units, key=lambda unit: unit != "config.json"):
        if (target / unit).exists() or (target / unit).is_symlink():
            (aside / ASIDE_ENTRIES / unit).parent.mkdir(parents=True, exist_ok=True)
            os.rename(target / unit, aside / ASIDE_ENTRIES / unit)
    written = _manifest_files(target) or set()
    for unit in sorted(units, key=lambda unit: unit == "config.json"):
        (target / unit).parent.mkdir(parents=True, exist_ok=True)
        os.rename(staging / unit, target / unit)
        written = {path for path in written if path != unit and not path.startswith(f"{unit}/")}
        written |= _files_under(target / unit, target)
    write_text_atomically(target / MANIFEST_NAME, json.dumps({"files": sorted(written)}, indent=1))
    shutil.rmtree(aside)


@contextmanager
def staged_output(target, overwrite: bool = False, inputs=(), option: str | None = "--overwrite", units=None):
    """Context manager yielding a new staging folder for results that end up in `target`.

    Checks the target up front ([`check_output_target`]), locks it, and on success publishes: with `units=None` the
    staging folder becomes `target` (the old target, an earlier result of ours, is removed only after the swap); with
    a list of sub-paths (or [`ALL_ENTRIES`]) only those entries of `target` are replaced, the rest of it is kept. On
    an exception nothing is published and the staging folder is removed, as are the parents it created.
    """
    target = Path(target)
    check_output_target(target, overwrite, inputs, option, units)
    created = [parent for parent in [target.parent, *target.parent.parents] if not parent.exists()]
    target.parent.mkdir(parents=True, exist_ok=True)
    published = False
    try:
        with _lock(target):
            _recover_stale_siblings(target)
            check_output_target(target, overwrite, inputs, option, units)  # again, now that no other run writes
            staging = make_sibling_dir(target, "staging")
            try:
                yield staging
                _apply_umask(staging)
                chosen = units
                if units == ALL_ENTRIES:
                    chosen = [child.name for child in staging.iterdir() if child.name != OWNER_MARKER]
                if chosen is None:
                    manifest = json.dumps({"files": sorted(_files_under(staging) - {OWNER_MARKER})}, indent=1)
                    (staging / MANIFEST_NAME).write_text(manifest, encoding="utf-8")
                    _publish_folder(staging, target)
                else:
                    for unit in chosen:
                        clash = _overlaps(target / unit, inputs)
                        if clash is not None:
                            raise OutputFolderError(f"The output {target / unit} is or contains the input {clash}.")
                    _publish_entries(staging, target, chosen)
                published = True
            finally:
                if staging.exists():
                    shutil.rmtree(staging)
    finally:
        if not published:
            for parent in created:  # innermost first
                try:
                    parent.rmdir()
                except OSError:
                    break


__all__ = [
    "ALL_ENTRIES",
    "MANIFEST_NAME",
    "OWNER_MARKER",
    "OutputFolderError",
    "check_output_target",
    "disown_sibling_dir",
    "make_sibling_dir",
    "staged_output",
    "temporary_sibling_file",
    "write_text_atomically",
]


def push_folder_to_hub(folder, repo_id: str, commit_message: str, private: bool = False) -> str:
    """Uploads a published output folder (model, processor, card) to the Hub repository `repo_id` in one commit,
    creating the repository if needed; its manifest, training checkpoints and logs stay local. Returns the commit
    URL."""
    import huggingface_hub

    api = huggingface_hub.HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True)
    commit = api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        commit_message=commit_message,
        ignore_patterns=["checkpoint-*", "checkpoint-*/**", "runs/**", MANIFEST_NAME],
    )
    return getattr(commit, "commit_url", repo_id)
