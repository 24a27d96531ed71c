"""recon.files: the lock that keeps two runs from writing the same output."""

from __future__ import annotations

import pytest

from recon.files import exclusive


@pytest.mark.parametrize("remove", [False, True])
def test_a_held_lock_refuses_a_second_holder_until_released(tmp_path, remove):
    lock = tmp_path / ".out.lock"
    with exclusive(lock, "busy: out", remove=remove):
        with pytest.raises(ValueError, match="busy: out"):
            with exclusive(lock, "busy: out"):
                pass
    assert lock.exists() is not remove
    with exclusive(lock, "busy: out"):  # free again
        pass


def test_a_lock_is_never_taken_through_a_symbolic_link(tmp_path):
    target = tmp_path / "notes.txt"
    target.write_text("a user's notes")
    (tmp_path / ".out.lock").symlink_to(target)
    with pytest.raises(ValueError, match="not a regular file"):
        with exclusive(tmp_path / ".out.lock", "busy", remove=True):
            pass
    assert target.read_text() == "a user's notes" and (tmp_path / ".out.lock").is_symlink()


def test_a_file_with_contents_under_the_lock_name_is_never_removed(tmp_path):
    lock = tmp_path / ".prior.pt.lock"
    lock.write_text("a user's notes")
    with exclusive(lock, "busy", remove=True):
        pass
    assert lock.read_text() == "a user's notes"


def test_a_file_that_appeared_during_the_write_is_kept_and_named(tmp_path):
    from recon.files import move_into_place

    temp, path = tmp_path / "out.h5.0123abcd.tmp", tmp_path / "out.h5"
    temp.write_text("new")
    path.write_text("a user's file")
    with pytest.raises(FileExistsError, match="out.h5 appeared while the study was simulated; not replaced"):
        move_into_place(str(temp), str(path), overwrite=False, during="the study was simulated")
    assert path.read_text() == "a user's file" and temp.read_text() == "new"
    move_into_place(str(temp), str(path), overwrite=True)
    assert path.read_text() == "new" and not temp.exists()
