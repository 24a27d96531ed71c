"""Batch outputs that survive a kill at any moment: per-slice shards, assembled atomically.

Why shards: an HDF5 file written in place can be left unreadable by a kill in the middle of a
metadata update (HDF5 has no journal), and compressed chunks move on every write. So a run never
writes its output file in place:

* each finished slice goes to its own small file ``OUT/<name>.parts/000012.npz`` (the arrays, and
  the status, error and scores as JSON), written under a temporary name and renamed: it exists
  whole or not at all, and a slice counts as done exactly when its shard exists;
* the output ``OUT/<name>.h5`` is assembled from the shards into a temporary file and renamed over
  the old one (at the start, every ``checkpoint_seconds`` and when the file is finished), so a
  reader always sees a complete file, with ``status`` telling which slices are in it;
* when every slice is done the shards are deleted; a file with failed slices keeps its shards so
  that the next run only retries those;
* where the slices of a file share one self-validation, its record (``choice.npz``) is written
  beside the shards before the reference slice's shard; the assembled output's metadata says what
  it chose (``volume_choice``). A file whose shards are gone has no record: a run that must
  retry slices of it redoes its reference slice first, which gives the same choice.

The assembled output follows ``recon.result``'s layout with slices stacked on axis 0: ``mean``,
``std``, ``initial`` ``(N, C, H, W)``, optional ``samples`` ``(N, K, C, H, W)``, one slice per
chunk, gzip-compressed, NaN for slices not done; per-slice ``status`` ("pending", "done",
"failed"), ``error``, ``psnr``, ``ssim`` (NaN without ground truth), ``seconds``,
``n_network_evals``; attributes from :func:`recon.result.write_attrs` (``metadata``: settings,
version, prior, input, input_contents, fingerprint, counts) plus ``settings`` (JSON), ``version``,
``prior_name``, ``prior_checksum``, ``fingerprint`` for direct reading.

An output resumes only from the same settings (its ``fingerprint``) and the same input file: the
input's ``input_contents`` (:mod:`recon.batch.contents`) are recorded beside the fingerprint, and
a run whose input's differ is refused. Outputs from before that record resume as they did.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import shutil
from typing import Optional

import numpy as np

from recon.batch.settings import EXECUTION_KEYS
from recon.files import fresh_temp, stale_temps
from recon.result import ARRAYS, decode_metadata, encode_metadata, read_metadata, write_attrs

logger = logging.getLogger(__name__)

PENDING, DONE, FAILED = "pending", "done", "failed"
STAMP = "run.json"  # in every work folder this package makes: what is not stamped is not ours
#: what an output keeps of the run that wrote it (in its run stamp, and in the assembled file's metadata),
#: read back by :meth:`OutputStore.check` to compare a later run with it
RECORDED = ("fingerprint", "settings", "fingerprint_settings", "n_slices", "version", "input_contents")
CHOICE_NAME = "choice.npz"  # the volume's shared self-validation, beside the shards
#: a finished output's ``volume_choice`` metadata, kept beside the shards it is unpacked into (its
#: choice.npz went with the shards when it finished): reassembled, the output keeps what it chose
KEPT_CHOICE_NAME = "volume_choice.json"
_SCALARS = ("psnr", "ssim", "seconds", "n_network_evals")


def read_texts(dataset) -> list:
    """An assembled output's per-slice text (``status``, ``error``) as str, however h5py returns it."""
    return [s.decode() if isinstance(s, bytes) else str(s) for s in dataset[()]]


def _is_batch_output(path: str) -> bool:
    """Whether ``path`` is an output ``recon batch`` assembled (our format, ``kind`` batch), not a study or a
    single result someone keeps under that name."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            metadata = read_metadata(f)
    except (OSError, ValueError):
        return False
    return isinstance(metadata, dict) and metadata.get("kind") == "batch"


def _what_changed(old: dict, new: dict) -> str:
    """How an input's recorded contents (:func:`recon.batch.contents.input_contents`, and its companion
    files') differ, in words."""
    if old.get("bytes") != new.get("bytes"):
        return f"{old.get('bytes')} -> {new.get('bytes')} bytes"
    if old.get("sample_sha256") != new.get("sample_sha256"):
        return "the same size, other bytes"
    changed = sorted(k for k in {*old, *new} - {"bytes", "sample_sha256"} if old.get(k) != new.get(k))
    return ", ".join(f"its {k.replace('_', ' ')} file " + ("appeared" if k not in old else "is gone" if k not in new
                                                            else "changed") for k in changed)


class SettingsConflict(ValueError):
    """An output exists from other settings; it is never overwritten silently."""


def _atomic_replace(tmp: str, path: str) -> None:
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)


class OutputStore:
    """The output of one input file: ``OUT/<key>.h5`` and, while unfinished, ``OUT/<key>.parts/``."""

    def __init__(self, out_dir: str, key: str, n_slices: int, fingerprint: str, metadata: dict, also_accepted=()):
        self.out_dir = os.fspath(out_dir)
        self.key = key
        self.path = os.path.join(self.out_dir, key + ".h5")
        self.parts = os.path.join(self.out_dir, key + ".parts")
        self.n_slices = int(n_slices)
        self.fingerprint = fingerprint
        # earlier spellings of the same fingerprint (e.g. taken before settings that do not apply to
        # a file were left out): an output stamped with one of them holds the same numbers
        self.also_accepted = tuple(also_accepted)
        self.metadata = dict(metadata)

    # ------------------------------------------------------------------ resume checks
    def _work_folders(self) -> tuple:
        return self.parts, self.parts + ".unpack", self.parts + ".trash"

    def check_ours(self) -> None:
        """Refuse to run if a name this store writes or removes holds something it did not make.

        A user's folder (or link) at ``OUT/<name>.parts`` would otherwise get ``run.json`` written
        into it and be deleted when the output finishes; a folder at ``OUT/<name>.h5`` cannot be
        replaced. Checked before any work, with ``--overwrite`` too.
        """
        for folder in self._work_folders():
            if os.path.lexists(folder) and not _is_ours(folder):
                raise ValueError(f"{folder} exists but was not made by recon batch (no {STAMP} in it); it is left "
                                 "alone: move it away or choose another --out")
        if os.path.lexists(self.path) and not os.path.isfile(self.path):
            raise ValueError(f"{self.path} exists but is not a file; move it away or choose another --out")
        if os.path.isfile(self.path) and not _is_batch_output(self.path):  # a user's study or result: never removed
            raise ValueError(f"{self.path} exists but is not a recon batch output; it is left alone, --overwrite "
                             "too: move it away or choose another --out")

    def _previous(self) -> Optional[dict]:
        """Fingerprint and settings of an earlier run into this output, or None."""
        stamp = os.path.join(self.parts, STAMP)
        if os.path.isfile(stamp):
            try:
                with open(stamp) as handle:
                    previous = json.load(handle)
            except (OSError, ValueError) as err:  # a damaged stamp: its name, not a bare JSON error
                raise SettingsConflict(f"{stamp} cannot be read ({err}), so the earlier run's settings are unknown; "
                                       "pass --overwrite to start this output again or choose another --out") from err
            if not isinstance(previous, dict):
                raise SettingsConflict(f"{stamp} holds no run settings; pass --overwrite to start this output again "
                                       "or choose another --out")
            return previous
        if os.path.exists(self.path):
            import h5py

            try:
                with h5py.File(self.path, "r") as f:
                    metadata = read_metadata(f)
            except (OSError, ValueError) as err:  # check_ours refuses such a file first; kept for a direct call
                raise SettingsConflict(f"{self.path} exists but is not a readable batch output ({err}); "
                                       "move it away or choose another --out") from err
            return {key: metadata.get(key, {} if key == "settings" else None) for key in RECORDED}
        return None

    def check(self) -> None:
        """Raise :class:`SettingsConflict` if an earlier run wrote this output with other settings or from another
        input file."""
        previous = self._previous()
        if previous is None:
            return
        self._check_input(previous.get("input_contents"))
        if previous.get("fingerprint") in (self.fingerprint, *self.also_accepted):
            return
        old, new = previous.get("settings", {}), self.metadata.get("settings", {})
        if previous.get("fingerprint_settings") and self.metadata.get("fingerprint_settings"):
            # name only what counts for this file, not flags that do not apply to it
            old, new = previous["fingerprint_settings"], self.metadata["fingerprint_settings"]
        changed = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
                   if k in new and old.get(k) != new.get(k) and k not in EXECUTION_KEYS]
        if previous.get("n_slices") not in (None, self.n_slices):
            changed.append(f"n_slices: {previous.get('n_slices')} -> {self.n_slices}")
        if previous.get("version") not in (None, self.metadata.get("version")):
            changed.append(f"diffrecon version: {previous.get('version')} -> {self.metadata.get('version')}")
        detail = "; ".join(changed) or "the prior weights or the input changed"
        raise SettingsConflict(f"{self.path} was written with different settings ({detail}). Refusing to mix them: "
                               "pass --overwrite to replace it, or choose another --out")

    def _check_input(self, old: Optional[dict]) -> None:
        """Raise :class:`SettingsConflict` if the input file is not the one the earlier run read.

        An output recorded without the input's contents (written before they were) is not refused.
        """
        new = self.metadata.get("input_contents")
        if old is None or new is None or old == new:
            return
        detail = _what_changed(old if isinstance(old, dict) else {}, new)
        name = (self.metadata.get("input") or {}).get("path") or self.key
        raise SettingsConflict(f"the input {name} is not the file {self.path} was made from: it changed since ({detail}). "
                               "Refusing to mix slices of two files: pass --overwrite to start this output again "
                               "from the file as it is now, or choose another --out")

    def statuses(self) -> list:
        """Status of every slice as this store sees it now (shards first, else the assembled file)."""
        status = [PENDING] * self.n_slices
        if os.path.isdir(self.parts):
            for index, meta in self._shard_metas():
                status[index] = meta["status"]
        elif os.path.exists(self.path):
            import h5py

            with h5py.File(self.path, "r") as f:
                if "status" in f:
                    status = read_texts(f["status"])
        return status

    # ------------------------------------------------------------------ run lifecycle
    def prepare(self, overwrite: bool = False) -> set:
        """Make ready for writing; return the indices already done (skipped by this run)."""
        self.check_ours()
        for leftover in (self.parts + ".unpack", self.parts + ".trash"):  # left by a kill in unpack or finish
            _remove_ours(leftover)
        if overwrite:
            _remove_ours(self.parts)
            if os.path.exists(self.path):
                os.remove(self.path)
        self.check()
        if os.path.exists(self.path) and not os.path.isdir(self.parts):
            self._unpack()
        if not os.path.isdir(self.parts):
            os.makedirs(self.parts)  # a kill before the stamp below leaves it empty, which counts as ours
        for stale in glob.glob(os.path.join(self.parts, "*.tmp")) + stale_temps(self.path):
            os.remove(stale)  # left by a kill in the middle of a write
        self._write_stamp(self.parts)
        return {i for i, s in enumerate(self.statuses()) if s == DONE}

    def _write_stamp(self, folder: str) -> None:
        stamp = {**{key: self.metadata.get(key) for key in RECORDED}, "settings": self.metadata.get("settings", {}),
                 "fingerprint": self.fingerprint, "n_slices": self.n_slices}
        tmp = fresh_temp(os.path.join(folder, STAMP))
        with open(tmp, "w") as handle:
            json.dump(stamp, handle, sort_keys=True, default=str)
        _atomic_replace(tmp, os.path.join(folder, STAMP))

    def _unpack(self) -> None:
        """Turn a finished output's done slices back into shards (to retry its failed slices).

        The shards are written into a side folder renamed into place when complete: a kill half-way
        must not leave a shard folder that hides the slices not yet unpacked (they would be redone).
        """
        import h5py

        final = self.parts
        self.parts = final + ".unpack"
        try:
            _remove_ours(self.parts)
            os.makedirs(self.parts)
            self._write_stamp(self.parts)  # stamped before it is renamed into place: ours at every moment
            with h5py.File(self.path, "r") as f:
                kept = read_metadata(f).get("volume_choice")
                if kept is not None:
                    with open(os.path.join(self.parts, KEPT_CHOICE_NAME), "w") as handle:
                        handle.write(encode_metadata(kept))
                status = read_texts(f["status"])
                for index, state in enumerate(status):
                    if state != DONE:
                        continue
                    arrays = {name: f[name][index] for name in ARRAYS if name in f}
                    meta = {"status": DONE, "error": ""}
                    meta.update({name: float(f[name][index]) for name in _SCALARS if name in f})
                    self._write_shard(index, arrays, meta)
        finally:
            unpacked, self.parts = self.parts, final
        os.rename(unpacked, final)

    def _shard_path(self, index: int) -> str:
        return os.path.join(self.parts, f"{index:06d}.npz")

    def _write_shard(self, index: int, arrays: dict, meta: dict) -> None:
        _write_npz(self._shard_path(index), {"_meta": np.array(json.dumps(meta, default=str)), **arrays})

    def save(self, outcome) -> None:
        """Record one slice: its arrays and status land together, in one renamed file."""
        meta = {"status": outcome.status, "error": outcome.error, "psnr": outcome.psnr, "ssim": outcome.ssim,
                "seconds": outcome.seconds, "n_network_evals": outcome.n_network_evals, "prior": outcome.prior}
        arrays = outcome.arrays if outcome.status == DONE else {}
        self._write_shard(outcome.index, arrays, meta)

    # ------------------------------------------------------------------ the volume's shared choice
    def _choice_path(self) -> str:
        return os.path.join(self.parts, CHOICE_NAME)

    def save_choice(self, record: tuple) -> None:
        """Keep the self-validation the reference slice made (``Choice.record()``'s ``(info, arrays)``).

        Saved before the reference slice's shard, so a resumed run finds it whenever that slice is done.
        """
        write_choice_record(self._choice_path(), record)

    def drop_choice(self) -> None:
        """Remove a saved choice (one that cannot be used)."""
        if os.path.isfile(self._choice_path()):
            os.remove(self._choice_path())

    def load_choice(self) -> Optional[tuple]:
        """The saved ``(info, arrays)`` (``info`` None: the reference slice made no choice), or None."""
        return read_choice_record(self._choice_path())

    def _shard_metas(self):
        for path in sorted(glob.glob(os.path.join(self.parts, "[0-9]*.npz"))):
            index = int(os.path.basename(path)[:-4])
            if index >= self.n_slices:
                continue
            with np.load(path, allow_pickle=False) as data:
                yield index, json.loads(str(data["_meta"]))

    def assemble(self, save_samples: bool = False) -> dict:
        """Write ``OUT/<key>.h5`` from the shards, atomically; return the status counts."""
        import h5py

        status = [PENDING] * self.n_slices
        errors = [""] * self.n_slices
        scalars = {name: np.full(self.n_slices, np.nan) for name in _SCALARS}
        prior = None
        tmp = fresh_temp(self.path)
        with h5py.File(tmp, "w") as f:
            datasets: dict = {}
            for index, meta in self._shard_metas():
                status[index], errors[index] = meta["status"], meta.get("error", "")
                for name in _SCALARS:
                    scalars[name][index] = np.nan if meta.get(name) is None else meta[name]
                if meta["status"] != DONE:
                    continue
                prior = prior or meta.get("prior")
                with np.load(self._shard_path(index), allow_pickle=False) as data:
                    for name in ARRAYS:
                        if name not in data.files or (name == "samples" and not save_samples):
                            continue
                        value = data[name]
                        if name not in datasets:
                            datasets[name] = f.create_dataset(
                                name, shape=(self.n_slices, *value.shape), dtype="float32",
                                chunks=(1, *value.shape), compression="gzip", compression_opts=4, shuffle=True,
                                fillvalue=np.nan)
                        if datasets[name].shape[1:] != value.shape:
                            status[index] = FAILED
                            errors[index] = f"{name} has shape {value.shape}, other slices {datasets[name].shape[1:]}"
                            continue
                        datasets[name][index] = value
            counts = {state: status.count(state) for state in (PENDING, DONE, FAILED)}
            metadata = {**self.metadata, "kind": "batch", "fingerprint": self.fingerprint, "n_slices": self.n_slices,
                        "counts": counts}
            choice = self.load_choice() if os.path.isdir(self.parts) else None
            kept = os.path.join(self.parts, KEPT_CHOICE_NAME)
            if choice is not None and choice[0] is not None:  # what it chose and measured (the adapters: choice.npz only)
                metadata["volume_choice"] = {key: choice[0].get(key) for key in ("prior_label", "std_scale", "options", "metadata")}
            elif choice is None and os.path.isfile(kept):  # a finished output unpacked again: what it chose then
                with open(kept) as handle:
                    metadata["volume_choice"] = decode_metadata(handle.read())
            if prior is not None:
                metadata["prior"] = prior
            write_attrs(f, metadata)
            f.attrs["settings"] = json.dumps(self.metadata.get("settings", {}), sort_keys=True, default=str)
            f.attrs["version"] = str(self.metadata.get("version", ""))
            prior = metadata.get("prior") or {}
            f.attrs["prior_name"] = str(prior.get("name") or "")
            f.attrs["prior_checksum"] = str(prior.get("checksum") or "")
            f.attrs["fingerprint"] = self.fingerprint
            text = h5py.string_dtype()
            f.create_dataset("status", data=np.array(status, dtype=object), dtype=text)
            f.create_dataset("error", data=np.array(errors, dtype=object), dtype=text)
            for name, values in scalars.items():
                f.create_dataset(name, data=values.astype(np.float32 if name != "seconds" else np.float64))
        _atomic_replace(tmp, self.path)
        return counts

    def finish(self, save_samples: bool = False) -> dict:
        """Assemble a last time; drop the shards once every slice is done."""
        counts = self.assemble(save_samples)
        if counts[DONE] == self.n_slices:
            # out of the way in one rename first: a kill during the removal must not leave some shards
            # behind, which the next run would take for the whole list of finished slices
            trash = self.parts + ".trash"
            _remove_ours(trash)
            if os.path.isdir(self.parts):
                os.rename(self.parts, trash)
            _remove_ours(trash)
        return counts


def write_choice_record(path: str, record: tuple) -> None:
    """A choice's ``(info, arrays)`` (``Choice.record()``) to one npz file: ``info`` as JSON beside the arrays."""
    info, arrays = record
    _write_npz(path, {"_info": np.array(json.dumps(info, default=str)), **arrays})


def read_choice_record(path: str) -> Optional[tuple]:
    """The ``(info, arrays)`` :func:`write_choice_record` wrote at ``path``; None where there is no file."""
    if not os.path.isfile(path):
        return None
    with np.load(path, allow_pickle=False) as data:
        return json.loads(str(data["_info"])), {name: data[name] for name in data.files if name != "_info"}


def _write_npz(path: str, arrays: dict) -> None:
    """``arrays`` to ``path`` under a temporary name, renamed: the file exists whole or not at all."""
    tmp = fresh_temp(path)
    with open(tmp, "wb") as handle:
        np.savez(handle, **arrays)
    _atomic_replace(tmp, path)


def _is_ours(folder: str) -> bool:
    """A real folder (not a link) holding our stamp, or empty (made, then killed before the stamp)."""
    return (os.path.isdir(folder) and not os.path.islink(folder)
            and (os.path.isfile(os.path.join(folder, STAMP)) or not os.listdir(folder)))


def _remove_ours(folder: str) -> None:
    """Remove a work folder of ours, its stamp last: a kill half-way leaves it still recognisably ours."""
    if not os.path.lexists(folder):
        return
    if not _is_ours(folder):
        raise ValueError(f"{folder} was not made by recon batch (no {STAMP} in it); it is left alone")
    for name in sorted(os.listdir(folder), key=lambda n: n == STAMP):
        path = os.path.join(folder, name)
        shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.remove(path)
    os.rmdir(folder)
