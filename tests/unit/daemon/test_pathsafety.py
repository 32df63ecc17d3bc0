"""The folder rules for python_path and cwd (procpoold.pathsafety), on real folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from procpoold.pathsafety import check_folders, unsafe_folder

pytestmark = pytest.mark.unit


def _dir(path: Path, mode: int) -> Path:
    path.mkdir()
    os.chmod(path, mode)
    return path


def test_private_folder_is_safe(tmp_path: Path) -> None:
    lib = _dir(tmp_path / "lib", 0o755)
    os.chmod(tmp_path, 0o755)
    assert unsafe_folder(str(lib), imports=True) is None
    assert unsafe_folder(str(lib), imports=False) is None


def test_world_writable_import_folder_is_refused_even_when_sticky(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o755)
    shared = _dir(tmp_path / "shared", 0o1777)
    problem = unsafe_folder(str(shared), imports=True)
    assert problem is not None and "plant a module" in problem
    assert unsafe_folder(str(shared), imports=False) is None  # a sticky cwd such as /tmp is fine


def test_world_writable_ancestor_without_sticky_is_refused(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o755)
    open_dir = _dir(tmp_path / "open", 0o777)
    inner = _dir(open_dir / "inner", 0o755)
    for imports in (True, False):
        problem = unsafe_folder(str(inner), imports=imports)
        assert problem is not None and "above" in problem and "not sticky" in problem


def test_import_folder_owned_by_someone_else_is_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give a folder away")
    os.chmod(tmp_path, 0o755)
    theirs = _dir(tmp_path / "theirs", 0o755)
    os.chown(theirs, 4242, 4242)
    problem = unsafe_folder(str(theirs), imports=True, owner_uid=1000)
    assert problem is not None and "uid 4242" in problem
    assert unsafe_folder(str(theirs), imports=True, owner_uid=4242) is None


def test_symlink_is_followed(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o755)
    target = _dir(tmp_path / "target", 0o777)
    link = tmp_path / "link"
    link.symlink_to(target)
    assert unsafe_folder(str(link), imports=False) is not None


def test_missing_folder_passes_but_its_ancestors_are_checked(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o755)
    assert unsafe_folder(str(tmp_path / "nope" / "deeper"), imports=True) is None
    open_dir = _dir(tmp_path / "open", 0o777)
    assert unsafe_folder(str(open_dir / "nope"), imports=True) is not None


def test_check_folders_names_the_index(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o755)
    ok = _dir(tmp_path / "ok", 0o755)
    bad = _dir(tmp_path / "bad", 0o777)
    problem = check_folders([str(ok), str(bad)], imports=True, what="python_path")
    assert problem is not None and problem.startswith("python_path[1]: ")
    assert check_folders([str(ok)], imports=True, what="python_path") is None


def test_nul_byte_and_relative_paths() -> None:
    assert unsafe_folder("/tmp/a\x00b", imports=True) == "contains a NUL byte"
    assert unsafe_folder("relative/dir", imports=True) is None


def test_a_missing_import_folder_that_anyone_could_create_is_refused(tmp_path: Path) -> None:
    # "/tmp/mylib" before anyone made it: the sticky bit keeps nobody from creating it, and
    # whoever does fills it with modules the job then imports.
    os.chmod(tmp_path, 0o755)
    sticky = _dir(tmp_path / "sticky", 0o1777)
    problem = unsafe_folder(str(sticky / "mylib"), imports=True)
    assert problem is not None and "does not exist" in problem and "anyone" in problem, problem
    assert unsafe_folder(str(sticky / "mylib"), imports=False) is None  # a cwd is only entered
    if os.geteuid() == 0:
        theirs = _dir(tmp_path / "theirs", 0o755)
        os.chown(theirs, 4242, 4242)
        problem = unsafe_folder(str(theirs / "lib"), imports=True, owner_uid=1000)
        assert problem is not None and "uid 4242" in problem, problem
        assert unsafe_folder(str(theirs / "lib"), imports=True, owner_uid=4242) is None


def test_a_symlinked_ancestor_is_resolved_before_its_target_is_judged(tmp_path: Path) -> None:
    # The path itself is plain; a folder above it is a symlink into a folder anyone may rename
    # entries of: the check must follow the link, not judge the link's own (safe) parent.
    os.chmod(tmp_path, 0o755)
    open_dir = _dir(tmp_path / "open", 0o777)
    _dir(open_dir / "lib", 0o755)
    (tmp_path / "via").symlink_to(open_dir)
    for path in (tmp_path / "via" / "lib", str(tmp_path / "via" / "lib") + "/", f"{tmp_path}/x/../via/lib"):
        problem = unsafe_folder(str(path), imports=True)
        assert problem is not None and "not sticky" in problem


def test_a_folder_is_judged_again_after_it_changes(tmp_path: Path) -> None:
    # Nothing is remembered between calls: a folder made unsafe after a check is refused next time.
    os.chmod(tmp_path, 0o755)
    lib = _dir(tmp_path / "lib", 0o755)
    assert unsafe_folder(str(lib), imports=True) is None
    os.chmod(tmp_path, 0o777)
    assert unsafe_folder(str(lib), imports=True) is not None
    os.chmod(tmp_path, 0o755)
    lib.rmdir()
    lib.symlink_to(_dir(tmp_path / "open", 0o777))
    assert unsafe_folder(str(lib), imports=True) is not None


def test_a_file_in_the_middle_of_the_path_counts_as_missing_below_it(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o755)
    (tmp_path / "file").write_text("")
    assert unsafe_folder(str(tmp_path / "file" / "lib"), imports=True) is None
    open_dir = _dir(tmp_path / "open", 0o777)
    (open_dir / "file").write_text("")
    problem = unsafe_folder(str(open_dir / "file" / "lib"), imports=True)
    assert problem is not None and "does not exist, and anyone may create it" in problem
