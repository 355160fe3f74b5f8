"""Paths: inputs are never overwritten, outputs are checked before the work, devices are refused,
any file name can be named, duplicates are caught."""

import os
import shutil

import h5py
import pytest

from .helpers import assert_one_line_error, cli, edit_warp, leftovers, warps_of

BAND = ["--effective-wavelength", "476.31", "--bandwidth", "147"]


def _digest(path):
    import hashlib

    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.mark.parametrize("which", ["warp", "manifest", "config"])
def test_output_naming_an_input_is_refused_even_with_overwrite(field_copy, capsys, which):
    manifest = field_copy / "manifest.toml"
    config = field_copy / "c.toml"
    config.write_text("dcrNumSubfilters = 3\n")
    target = {"warp": warps_of(field_copy)[1], "manifest": manifest, "config": config}[which]
    before = _digest(target)
    code, _, err = cli(capsys, "run", manifest, "--config", config, "-o", target, "--overwrite")
    assert_one_line_error(code, err, str(target), "is an input of this run")
    assert _digest(target) == before


def test_output_through_a_symlink_to_an_input_is_refused(field_copy, capsys):
    link = field_copy / "out.h5"
    link.symlink_to(warps_of(field_copy)[0])
    code, _, err = cli(capsys, "run", field_copy / "manifest.toml", "-o", link, "--overwrite")
    assert_one_line_error(code, err, "is an input of this run")


@pytest.mark.parametrize(
    "output, fragment",
    [
        ("", "the output path is empty"),
        ("{tmp}", "is a directory"),
        ("{tmp}/missing/m.h5", "does not exist"),
    ],
)
def test_bad_output_paths_fail_before_any_work(field, tmp_path, capsys, output, fragment):
    code, _, err = cli(capsys, "run", field[0] / "manifest.toml", "-o", output.format(tmp=tmp_path))
    assert_one_line_error(code, err, fragment)
    assert not any("iteration" in line for line in err)


def test_read_only_output_directory(field, tiny_fs, capsys):
    fs = tiny_fs("1m")
    os.system(f"mount -o remount,ro {fs}")
    code, _, err = cli(capsys, "run", field[0] / "manifest.toml", "-o", fs / "m.h5")
    assert_one_line_error(code, err, str(fs))


def test_checkpoint_path_equal_to_output(field, tmp_path, capsys):
    out = tmp_path / "m.h5"
    code, _, err = cli(capsys, "run", field[0] / "manifest.toml", "-o", out, "--checkpoint", out)
    assert_one_line_error(code, err, "the checkpoint path is the output path")


def test_negative_checkpoint_interval(field, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        cli(capsys, "run", field[0] / "manifest.toml", "-o", tmp_path / "m.h5", "--checkpoint-every", "-1")
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--checkpoint-every: -1 is negative" in err[0]


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom", "fifo"])
def test_devices_are_not_inputs(field, tmp_path, capsys, device):
    if device == "fifo":
        device = tmp_path / "pipe.fits"
        os.mkfifo(device)
    warps = [str(device), *map(str, field[1]["warps"][1:])]
    code, _, err = cli(capsys, "run", "--warps", *warps, *BAND, "-o", tmp_path / "m.h5")
    assert_one_line_error(code, err, str(device), "not a regular file")


@pytest.mark.parametrize("flag", ["manifest", "--config"])
def test_devices_are_not_text_files(field, tmp_path, capsys, flag):
    fifo = tmp_path / ("m.toml" if flag == "manifest" else "c.toml")
    os.mkfifo(fifo)
    args = [fifo] if flag == "manifest" else [field[0] / "manifest.toml", "--config", fifo]
    code, _, err = cli(capsys, "run", *args, "-o", tmp_path / "m.h5")
    assert_one_line_error(code, err, "a FIFO, not a regular file")


def test_file_names_with_glob_characters_and_long_paths(field, tmp_path, capsys):
    deep = tmp_path / ("d" * 120) / ("e" * 120)
    deep.mkdir(parents=True)
    names = []
    for i, w in enumerate(field[1]["warps"]):
        name = deep / f"visit[{i}]*.fits"
        shutil.copy(w, name)
        names.append(name)
    manifest = tmp_path / "m.toml"
    manifest.write_text(
        '[band]\neffectiveWavelength = 476.31\nbandwidth = 147.0\n'
        + "".join(f'[[warps]]\npath = "{n}"\n' for n in names)
    )
    code, _, err = cli(capsys, "run", manifest, "-o", tmp_path / "m.h5")
    assert code == 0, err
    with h5py.File(tmp_path / "m.h5") as f:
        files = [x.decode() for x in f["visits"]["file"]]
    assert files == [str(n) for n in names] and len(files[0]) > 256


def test_unmatched_warps_pattern(tmp_path, capsys):
    code, _, err = cli(capsys, "run", "--warps", str(tmp_path / "nothing*.fits"), *BAND, "-o", tmp_path / "m.h5")
    assert_one_line_error(code, err, "--warps: pattern", "matches no file")


def test_unquoted_warps_list(field, tmp_path, capsys):
    code, _, err = cli(capsys, "run", "--warps", *field[1]["warps"], *BAND, "-o", tmp_path / "m.h5")
    assert code == 0, err


def test_two_files_of_one_visit_are_refused(field_copy, capsys, tmp_path):
    a, b = warps_of(field_copy)[:2]
    edit_warp(b, header=lambda h: h.set("VISIT", 1000))
    code, _, err = cli(capsys, "run", field_copy / "manifest.toml", "-o", tmp_path / "m.h5")
    assert_one_line_error(code, err, "visit 1000", str(a), str(b))


def test_a_file_named_by_a_glob_and_an_override_is_used_once(field_copy, tmp_path, capsys):
    manifest = field_copy / "m2.toml"
    manifest.write_text(
        '[band]\neffectiveWavelength = 476.31\nbandwidth = 147.0\n'
        '[[warps]]\npath = "warps/*.fits"\n'
        '[[warps]]\npath = "warps/visit_1001.fits"\nhumidity = 20.0\n'
    )
    code, _, err = cli(capsys, "run", manifest, "-o", tmp_path / "m.h5")
    assert code == 0, err
    with h5py.File(tmp_path / "m.h5") as f:
        assert len(f["visits"]) == 4
    # conflicting overrides of one file are refused
    manifest.write_text(manifest.read_text() + '[[warps]]\npath = "warps/visit_1001.fits"\nhumidity = 30.0\n')
    code, _, err = cli(capsys, "run", manifest, "-o", tmp_path / "n.h5")
    assert_one_line_error(code, err, "visit_1001.fits is named twice", "'humidity'")


def test_planted_symlinks_at_old_temporary_names_are_not_followed(field, tmp_path, capsys):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "m.h5"
    for name in ("m.h5.tmp", "m.h5.ckpt.tmp"):
        (tmp_path / name).symlink_to(victim)
    code, _, err = cli(capsys, "run", field[0] / "manifest.toml", "-o", out, "--checkpoint-every", "1")
    assert code == 0, err
    assert victim.read_text() == "precious"
    assert h5py.is_hdf5(out) and h5py.is_hdf5(f"{out}.ckpt")
    assert sorted(leftovers(tmp_path)) == ["m.h5.ckpt.tmp", "m.h5.tmp"]  # only the planted links
