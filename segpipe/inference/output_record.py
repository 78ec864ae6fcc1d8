"""What `segpipe-predict` may write where: never over its inputs, never over a file it did not write, and a
rerun that picks up where a killed one stopped.

The output folder keeps a record of what predict wrote there, `predict-files.jsonl`: one JSON line per image,
appended BEFORE that image's files are renamed into place (each file is written atomically), so a file that
exists and is named in the record is predict's own, whole, and may be replaced; any other existing file is
the user's and is never replaced. A line also carries the input's size and modification time and a digest of
the model and settings: a rerun skips an image whose line matches and whose files all exist. A killed run
leaves at most a cut-off last line, which reading skips; a finished run rewrites the record with one line
per image.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path

from segpipe.core.outputs import write_text

RECORD_NAME = "predict-files.jsonl"
SUMMARY_NAME = "predict.json"
_LISTED = 5  # paths listed in an error; the rest are counted
_TEMP_NAME = re.compile(r"^\.(.+)\.[^.]+\.tmp$")  # segpipe.core.outputs' temp name for <name>


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_output_folder(output: Path, *, input: Path, input_files: list[Path]) -> None:
    """A ValueError, before anything is written, when `output` is an existing file, is not writable, is the
    input folder, lies inside it (predict reads folders recursively) or holds one of `input_files`; links
    are followed, so a link to the input folder counts as the input folder."""
    if output.exists() and not output.is_dir():
        raise ValueError(f"--output '{output}' is an existing file; expected a folder for the masks (created if "
                         "missing): choose another path.")
    out, source = output.resolve(), input.resolve()
    if input.is_dir() and _inside(out, source):
        where = "is the input folder" if out == source else "lies inside the input folder"
        raise ValueError(f"--output '{output}' {where} --input '{input}': the masks would replace or mix with "
                         "the images (and be read as inputs on the next run); choose an output folder outside "
                         f"'{input}', e.g. '{input.resolve().parent / (input.resolve().name + '_masks')}'.")
    held = [file for file in input_files if _inside(file.resolve(), out)]
    if held:
        raise ValueError(f"--output '{output}' holds {len(held)} of the input image(s) ('{held[0]}'): masks "
                         "written there could replace them; choose an output folder that holds no input, e.g. "
                         "a new folder beside the images.")
    _check_writable(output)


def _check_writable(output: Path) -> None:
    """Creates and removes a temp file in `output`, or in its nearest existing parent when it does not exist
    yet: the one way to know that also holds for root without its override capability and read-only mounts."""
    folder = output
    while not folder.exists():
        folder = folder.parent
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".segpipe-predict.", suffix=".tmp")
    except OSError as err:
        raise ValueError(f"--output '{output}' cannot be written ({err.strerror} in '{folder}'); choose a folder "
                         "you can write to, or make it writable (chmod u+w).") from None
    os.close(fd)
    os.unlink(probe)


def settings_digest(model: Path, **settings) -> str:
    """A digest of the model file, the inference record beside it and `settings`: what makes two runs'
    masks of one unchanged input the same."""
    digest = hashlib.sha256()
    with open(model, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    inference = model.with_name("inference.json")
    digest.update(inference.read_bytes() if inference.is_file() else b"")
    digest.update(json.dumps(settings, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def source_of(path: Path, page: int) -> list:
    """[size, modification time (ns), page] of an input: its identity between two runs."""
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns, page]


class OutputRecord:
    """The record of one output folder (module docstring): which files predict wrote there and for what."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.path = self.folder / RECORD_NAME
        self.entries: dict[str, dict] = {}
        self.ours: set[str] = set()
        if self.path.is_file():
            for line in self.path.read_text(errors="replace").splitlines():
                try:
                    entry = json.loads(line)
                    self._add(entry)
                except (ValueError, TypeError, KeyError):
                    continue  # the cut-off last line of a killed run
        self._log = None

    def _add(self, entry: dict) -> None:
        stem, files = entry["stem"], list(entry["files"])
        earlier = self.entries.get(stem)
        kept = [*earlier["files"], *earlier.get("also", [])] if earlier else []
        entry["also"] = sorted(set(kept) | set(entry.get("also", [])) - set(files))
        self.entries[stem] = entry
        self.ours.update(files, entry["also"])

    def is_done(self, stem: str, *, source: list, settings: str, files: list[str]) -> bool:
        """Whether `stem` was predicted from this very input with these settings and all its files exist."""
        entry = self.entries.get(stem)
        return (entry is not None and entry.get("source") == source and entry.get("settings") == settings
                and entry["files"] == files and all((self.folder / name).is_file() for name in files))

    def foreign(self, names: list[str]) -> list[str]:
        """Those of `names` (paths relative to the folder) that exist but were not written by predict."""
        own = self.ours | ({SUMMARY_NAME} if self.path.is_file() else set())
        return [name for name in names if name not in own and (self.folder / name).exists()]

    def refuse_foreign(self, names: list[str]) -> None:
        """A ValueError listing the files of `names` that predict would replace but did not write."""
        found = self.foreign(names)
        if found:
            listed = "".join(f"\n  - {self.folder / name}" for name in found[:_LISTED])
            more = f"\n  (and {len(found) - _LISTED} more)" if len(found) > _LISTED else ""
            raise ValueError(f"--output '{self.folder}' already holds {len(found)} file(s) that segpipe-predict "
                             f"did not write (not in its record, {RECORD_NAME}), and this run would replace them; "
                             f"nothing was written:{listed}{more}\nChoose a new or empty output folder, or move "
                             "those files away.")

    def remove_leftovers(self) -> int:
        """Deletes the temp files that a killed run's atomic writes left beside files of this record (one scan
        of the folder; a temp file beside anything else is left alone); returns how many."""
        found = []
        for path in self.folder.rglob(".*.tmp") if self.folder.is_dir() else ():
            match = _TEMP_NAME.match(path.name)
            target = (path.parent / match[1]).relative_to(self.folder).as_posix() if match else None
            if target in self.ours or target in (RECORD_NAME, SUMMARY_NAME):
                found.append(path)
        for path in found:
            path.unlink()
        return len(found)

    def claim(self, stem: str, *, source: list, settings: str, files: list[str]) -> None:
        """Appends `stem`'s line before its files are written: from here on they are predict's to replace."""
        entry = {"stem": stem, "source": source, "settings": settings, "files": files}
        if self._log is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._log = open(self.path, "a", encoding="utf-8")
            if self._log.tell() and not self.path.read_bytes().endswith(b"\n"):
                self._log.write("\n")  # after a killed run's cut-off line
        self._log.write(json.dumps(entry, sort_keys=True) + "\n")
        self._log.flush()  # a killed process loses nothing flushed; a power cut may lose the last lines
        self._add(entry)

    def close(self) -> None:
        """Rewrites the record with one line per image (atomically), after a finished run."""
        if self._log is not None:
            self._log.close()
            self._log = None
        for entry in self.entries.values():  # files of earlier runs that the user has since removed
            entry["also"] = [name for name in entry["also"] if (self.folder / name).exists()]
        if self.entries:
            write_text(self.path, "".join(json.dumps(self.entries[stem], sort_keys=True) + "\n"
                                          for stem in sorted(self.entries)))
