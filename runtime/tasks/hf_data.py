"""An `hf:` task argument -> the rows of one split of a Hugging Face dataset, via the `datasets` package.

Three sources, told apart by the argument:

- `FORMAT:FILE` (FORMAT one of json, csv, parquet): a local data file, read by that
  packaged builder (`load_dataset(FORMAT, data_files=FILE)`);
- a local folder (a path that exists, or starts with `/`, `.` or `~`): a folder of data
  files (`load_dataset(FOLDER)`), or one written by `save_to_disk` (`load_from_disk`);
- anything else: a dataset id on the Hugging Face Hub (`load_dataset(ID)`), which needs
  the network unless it is in the local cache.

Settings (`--task-option`): `split` (default "train"), `config` (the dataset's config
name) and `revision` (hub only).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

from neuromas.diagnostics import UserError, did_you_mean

FILE_FORMATS = ("json", "csv", "parquet")
SETTINGS = ("split", "config", "revision")
DEFAULT_SPLIT = "train"


class Source(NamedTuple):
    """Where an `hf:` argument points: kind is "file", "folder" or "hub"."""

    kind: str
    location: str  # the file, the folder, or the hub id
    file_format: str | None = None  # for kind "file"


def parse_source(argument: str) -> Source:
    """Tell a data file, a local folder and a hub id apart; raises UserError for a local
    path that does not exist or a data file given without its format."""
    prefix, separator, rest = argument.partition(":")
    if separator and prefix in FILE_FORMATS:
        if not Path(rest).expanduser().is_file():
            raise UserError(f"task 'hf:{argument}': no file '{rest}'")
        return Source("file", str(Path(rest).expanduser()), prefix)
    path = Path(argument).expanduser()
    if path.is_file():
        suffix = path.suffix.lstrip(".").replace("jsonl", "json")
        guess = suffix if suffix in FILE_FORMATS else "json"
        raise UserError(f"task 'hf:{argument}' is a file: name its format, e.g. hf:{guess}:{argument} "
                        f"(formats: {', '.join(FILE_FORMATS)})")
    if path.is_dir():
        return Source("folder", str(path))
    if argument.startswith(("/", ".", "~")):
        raise UserError(f"task 'hf:{argument}': no folder '{argument}'")
    return Source("hub", argument)


def load_rows(argument: str, settings: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """The rows (as dicts) and column names of the chosen split; raises UserError for a
    missing `datasets` package, an unreachable hub, an unknown dataset, config or split,
    or an unknown setting."""
    unknown = [key for key in settings if key not in SETTINGS]
    if unknown:
        hint = did_you_mean(unknown[0], SETTINGS)
        raise UserError(f"hf tasks take the settings {', '.join(SETTINGS)}; unknown: {', '.join(unknown)}"
                        + (f"; {hint}" if hint else ""), exit_code=2)
    source = parse_source(argument)
    try:
        import datasets
    except ImportError:
        raise UserError("task 'hf:...' needs the datasets package\n  fix: pip install 'neuromas[tasks]'") from None
    split = str(settings.get("split", DEFAULT_SPLIT))
    config = settings.get("config")
    try:
        if source.kind == "folder" and _is_saved_to_disk(Path(source.location)):
            loaded = datasets.load_from_disk(source.location)
            dataset = _pick_split(loaded, split, argument) if isinstance(loaded, datasets.DatasetDict) else loaded
        elif source.kind == "file":
            dataset = datasets.load_dataset(source.file_format, data_files=source.location, split=split)
        else:
            dataset = datasets.load_dataset(source.location, config, split=split,
                                            revision=settings.get("revision") if source.kind == "hub" else None)
    except ConnectionError as err:  # the hub is unreachable (or offline mode is on) and nothing is cached
        raise UserError(
            f"cannot reach the Hugging Face Hub to load {source.location!r} ({err}); this machine may have no "
            "network access\n  fix: download the data where there is a network and pass a local copy: "
            "hf:json:FILE.jsonl, hf:parquet:FILE, hf:FOLDER, or jsonl:FILE"
        ) from None
    except datasets.exceptions.DatasetNotFoundError as err:
        raise UserError(f"no dataset {source.location!r}: {err}") from None
    except (ValueError, FileNotFoundError, datasets.exceptions.DatasetsError) as err:
        # unknown or missing config, unknown split, unreadable data: datasets' message lists the choices
        raise UserError(f"cannot load 'hf:{argument}' (split {split!r}"
                        + (f", config {config!r}" if config else "") + f"): {err}") from None
    return dataset.to_list(), list(dataset.column_names)


def _is_saved_to_disk(folder: Path) -> bool:
    from datasets import config

    return (folder / config.DATASET_STATE_JSON_FILENAME).is_file() or (
        folder / config.DATASETDICT_JSON_FILENAME).is_file()


def _pick_split(splits: Any, split: str, argument: str) -> Any:
    if split not in splits:
        raise UserError(f"'hf:{argument}' has no split {split!r} (splits: {', '.join(splits)}); "
                        "choose one with --task-option split=NAME")
    return splits[split]
