"""Memory: a patch too large for the machine or the process limits is refused before any
allocation, and an allocation failure is one line, not a MemoryError traceback."""

import math
import resource
import subprocess
import sys

from astropy.io import fits

from .helpers import assert_one_line_error, cli


def _sparse_warps(directory, template_warps, shape):
    """Warps of ``shape`` whose pixel blocks are holes in sparse files: headers only on disk."""
    directory.mkdir()
    paths = []
    for i, src in enumerate(template_warps):
        with fits.open(src) as hdul:
            headers = [hdul[0].header.copy()] + [hdul[e].header.copy() for e in ("IMAGE", "MASK", "VARIANCE")]
        path = directory / f"big_{i}.fits"
        with open(path, "wb") as fh:
            fh.write(headers[0].tostring().encode())
            for header in headers[1:]:
                header["NAXIS1"], header["NAXIS2"] = shape[1], shape[0]
                if "CRPIX1" in header:
                    header["CRPIX1"], header["CRPIX2"] = (shape[1] + 1) / 2, (shape[0] + 1) / 2
                fh.write(header.tostring().encode())
                fh.seek(math.ceil(shape[0] * shape[1] * 4 / 2880) * 2880, 1)
            fh.truncate()
        paths.append(str(path))
    return paths


BAND = ["--effective-wavelength", "476.31", "--bandwidth", "147"]


def test_a_patch_larger_than_the_machine_is_refused_before_reading(field, tmp_path, capsys):
    warps = _sparse_warps(tmp_path / "big", field[1]["warps"][:2], (16384, 16384))  # ~62 GiB per rank
    code, _, err = cli(capsys, "run", "--warps", *warps, *BAND, "-o", tmp_path / "m.h5")
    assert_one_line_error(code, err, "not enough memory for this decomposition", "GiB", "use more nodes or ranks")
    assert not (tmp_path / "m.h5").exists()


def test_the_process_limit_is_respected(field, tmp_path):
    warps = _sparse_warps(tmp_path / "big", field[1]["warps"][:2], (4096, 4096))  # ~4.3 GiB per rank

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (1_800 * 2**20, resource.RLIM_INFINITY))

    proc = subprocess.run([sys.executable, "-m", "mpidcr", "-q", "run", "--warps", *warps, *BAND, "-o",
                           str(tmp_path / "m.h5")], capture_output=True, text=True, preexec_fn=limit)  # fmt: skip
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "ulimit -v" in lines[0] and "not enough memory" in lines[0]


def test_an_allocation_failure_is_one_line(field, tmp_path, capsys, monkeypatch):
    from mpidcr import driver

    def no_memory(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(driver, "read_tile", no_memory)
    code, _, err = cli(capsys, "run", field[0] / "manifest.toml", "-o", tmp_path / "m.h5")
    assert_one_line_error(code, err, "out of memory")
    assert not (tmp_path / "m.h5").exists() and not list(tmp_path.glob(".*"))
