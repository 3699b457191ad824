"""Rows from a `datasets` data set (`task.dataset`): a Hugging Face hub name, a local directory of data files, or a
directory written by `save_to_disk`.

Why a module of its own: `datasets` is imported only when a run names a data set (it costs about a second), and
what it can raise (a missing directory, an unreachable hub, an unknown split) becomes one UserError here, so
launch/datafiles.py checks a split's rows exactly as it checks a file's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shared.errors import UserError


class DatasetSourceError(UserError):
    """A data set or split that cannot be read; the message names it and lists what there is."""


def load_splits(name: str) -> dict[str, Any]:
    """Split name -> `datasets.Dataset`. A `save_to_disk` directory is read with `load_from_disk` (a single saved
    Dataset is the split 'train'); anything else goes to `load_dataset` (a local directory of files or a hub name)."""
    import datasets

    try:
        loaded = datasets.load_from_disk(name)
    except FileNotFoundError:  # not a save_to_disk directory: a directory of data files or a hub name
        loaded = _load_dataset(name)
    if isinstance(loaded, datasets.Dataset):
        return {"train": loaded}
    return dict(loaded)


def split_rows(name: str, splits: dict[str, Any], split: str, key: str) -> list[dict[str, Any]]:
    """Every row of `split` as a dict; `key` is the config field that named it (for the message)."""
    if split not in splits:
        raise DatasetSourceError(
            f"{key}={split!r}: data set {name} has no such split; it has: {', '.join(splits) or 'none'}"
        )
    return splits[split].to_list()


def _load_dataset(name: str) -> Any:
    import datasets

    if (Path(name).is_absolute() or name.startswith(".")) and not Path(name).exists():
        raise DatasetSourceError(f"task.dataset={name!r}: no such directory")
    try:
        return datasets.load_dataset(name)
    except (FileNotFoundError, ConnectionError, ValueError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DatasetSourceError(
            f"task.dataset={name!r}: cannot load it as a save_to_disk directory, a directory of data files or a "
            f"hub data set ({first_line})"
        ) from None
