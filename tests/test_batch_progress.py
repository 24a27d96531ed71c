"""Progress inside a slice: a LoDoPaB slice takes minutes, and the run must show it is moving."""

import numpy as np
import pytest

import recon.batch.runner as runner
from recon.batch import run
from recon.demo import example_images, write_native_ct


@pytest.fixture
def study(tmp_path):
    return write_native_ct(str(tmp_path / "study.h5"), example_images(2, 32)[0], n_angles=20)


class _Recorder:
    def __init__(self):
        self.notes = []

    def note(self, text):
        self.notes.append(text)


def test_updates_inside_a_slice_are_throttled():
    now = {"t": 100.0}
    progress = _Recorder()
    steps = runner._SliceSteps(progress, "study", 3, clock=lambda: now["t"])
    for t, step in ((100.5, 1), (101.0, 2), (102.1, 3), (102.5, 4), (104.2, 5)):
        now["t"] = t
        steps(step, 10, None)
    assert progress.notes == ["study slice 3: step 3/10", "study slice 3: step 5/10"]


def test_a_failing_display_never_fails_the_slice():
    class Broken:
        def note(self, text):
            raise RuntimeError("terminal gone")

    now = {"t": 0.0}
    steps = runner._SliceSteps(Broken(), "study", 0, clock=lambda: now["t"])
    now["t"] = 10.0
    steps(1, 2, None)  # no exception


def test_a_batch_reports_steps_while_a_slice_runs(tmp_path, study, monkeypatch):
    """The reconstruction's callback reaches the bar's note and the log before the slice is done."""
    monkeypatch.setattr(runner, "STEP_NOTE_SECONDS", 0.0)
    monkeypatch.setattr(runner, "STEP_LOG_SECONDS", 0.0)
    notes = []
    monkeypatch.setattr(runner._Progress, "note", lambda self, text: notes.append(text))
    out = tmp_path / "out"
    summary = run([study], out, method="tv", options={"max_iter": 4, "report_every": 1}, progress=False)
    assert summary.done == 2
    assert "study slice 0: step 1/4" in notes and "study slice 1: step 4/4" in notes
    log = (out / runner.LOG_NAME).read_text().splitlines()
    first_step = next(i for i, line in enumerate(log) if "study slice 0: step 1 of 4" in line)
    done = next(i for i, line in enumerate(log) if "study slice 0 done" in line)
    assert first_step < done


def test_steps_of_a_diffusion_slice_count_its_self_validation_run(tmp_path, study, monkeypatch):
    monkeypatch.setattr(runner, "STEP_NOTE_SECONDS", 0.0)
    notes = []
    monkeypatch.setattr(runner._Progress, "note", lambda self, text: notes.append(text))
    summary = run([study], tmp_path / "out", method="ccdf", steps=3, t0=0.5, samples=2, progress=False)
    assert summary.ok

    def steps_of(index):
        return [note.rsplit(" ", 1)[1] for note in notes if note.startswith(f"study slice {index}:")]

    reference = steps_of(runner.reference_slice(2))  # self-validates for the file
    totals = {int(n.split("/")[1]) for n in reference}
    assert len(totals) == 1 and reference[-1].split("/")[0] == reference[-1].split("/")[1]
    total = totals.pop()
    assert total % 3 == 0 and total >= 6  # 3 steps per run: the self-validation run, then the samples
    assert np.all(np.diff([int(n.split("/")[0]) for n in reference]) > 0)
    assert {int(n.split("/")[1]) for n in steps_of(0)} == {3}  # the other slice: its samples only


def test_quiet_bars_take_step_notes_without_error(tmp_path, study, monkeypatch):
    monkeypatch.setattr(runner, "STEP_NOTE_SECONDS", 0.0)
    assert run([study], tmp_path / "out", method="tv", options={"max_iter": 3}, progress=False).ok
