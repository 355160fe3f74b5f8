#!/usr/bin/env bash
# Set up mpidcr's development environment on Debian/Ubuntu (root) or any machine
# with an MPI and a parallel HDF5 already on PATH (SKIP_APT=1).
#
#   bash scripts/setup.sh            # creates .venv, idempotent; a second run takes seconds
#
# Steps (each skipped when already done):
#   1. apt: MPICH, parallel HDF5 (hdf5-mpich), pkg-config, patchelf
#   2. .venv with h5py's build requirements
#   3. mpi4py *binary wheel* (never a source build at -O3: it needs >20 GB RAM),
#      retargeted from libmpi.so.12 to Debian's libmpich.so.12 with patchelf so that
#      exactly one MPI (the one parallel HDF5 was built with) is loaded
#   4. h5py built against parallel HDF5 with --no-build-isolation (wheel cached in
#      $WHEELHOUSE, installed by file name), checked: h5py.get_config().mpi is True
#   5. mpidcr itself, editable, with the [test,sim,plot] extras
#   6. numba's cache filled with the kernels (python -m mpidcr.warmup): no compiling in the first run
#
# Knobs: PYTHON (python3), VENV (.venv), WHEELHOUSE (~/.cache/mpidcr-wheelhouse),
#        SKIP_APT=1, HDF5_PKG (hdf5-mpich), H5PY_VER (3.16.0), MPI4PY_VER (4.1.2)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
WHEELHOUSE=${WHEELHOUSE:-$HOME/.cache/mpidcr-wheelhouse}
HDF5_PKG=${HDF5_PKG:-hdf5-mpich}
H5PY_VER=${H5PY_VER:-3.16.0}
MPI4PY_VER=${MPI4PY_VER:-4.1.2}
EXTRAS=${EXTRAS:-test,sim,plot,instruments,docs}
t0=$SECONDS
say() { echo "[setup] $*"; }

# 1. system packages
if [ "${SKIP_APT:-0}" != 1 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  need=""
  for p in mpich libmpich-dev libhdf5-mpich-dev pkg-config patchelf gcc; do
    dpkg -s "$p" >/dev/null 2>&1 || need="$need $p"
  done
  if [ -n "$need" ]; then
    say "apt-get install$need"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $need >/dev/null
  fi
fi
command -v mpicc >/dev/null || { echo "[setup] error: mpicc not found (apt-get install libmpich-dev, or 'module load' your MPI)" >&2; exit 1; }
if mpiexec --version 2>&1 | grep -i "open mpi\|open-rte" >/dev/null; then
  echo "[setup] warning: mpiexec on PATH is Open MPI but parallel HDF5 here is built on MPICH;" \
       "fix with: update-alternatives --set mpirun /usr/bin/mpirun.mpich" >&2
fi

# 2. venv and build requirements
if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
"$PY" -m pip install -q -U pip "setuptools>=77" wheel "Cython>=3,<4" pkgconfig packaging numpy

# 3. mpi4py wheel, bound to the system MPI
if ! "$PY" -c "import mpi4py" 2>/dev/null; then
  say "installing mpi4py $MPI4PY_VER (binary wheel)"
  "$PY" -m pip install -q --only-binary mpi4py "mpi4py==$MPI4PY_VER"
fi
LIBMPICH=$(ldconfig -p | awk '/libmpich\.so\.12 / && !f {print $NF; f=1}')
MPIDIR=$("$PY" -c "import mpi4py, os; print(os.path.dirname(mpi4py.__file__))")
if [ -n "$LIBMPICH" ]; then
  for so in "$MPIDIR"/*.so "$MPIDIR"/*/*.so; do
    [ -e "$so" ] || continue
    if patchelf --print-needed "$so" 2>/dev/null | grep -x "libmpi.so.12" >/dev/null; then
      patchelf --replace-needed libmpi.so.12 libmpich.so.12 "$so"
    fi
  done
fi

# 4. parallel h5py
if ! "$PY" -c "import h5py, sys; sys.exit(0 if h5py.get_config().mpi else 1)" 2>/dev/null; then
  PYTAG=$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
  MPI_ID=$(mpichversion 2>/dev/null | awk '/Version:/ && !f {print "mpich" $NF; f=1}' || true)
  [ -n "$MPI_ID" ] || MPI_ID=$(mpicc -show 2>/dev/null | md5sum | cut -c1-8)
  WH="$WHEELHOUSE/$PYTAG-$MPI_ID-$HDF5_PKG"
  mkdir -p "$WH"
  if ! ls "$WH"/h5py-"$H5PY_VER"-*.whl >/dev/null 2>&1; then
    say "building h5py $H5PY_VER against parallel HDF5 ($HDF5_PKG); a few minutes, cached in $WH"
    if [ -n "${HDF5_DIR:-}" ]; then H5SRC=(HDF5_DIR="$HDF5_DIR"); else H5SRC=(HDF5_PKGCONFIG_NAME="$HDF5_PKG"); fi
    env "${H5SRC[@]}" HDF5_MPI=ON CC=mpicc CFLAGS="${H5PY_CFLAGS:--O1}" \
      "$PY" -m pip wheel -q --no-cache-dir --no-deps --no-build-isolation --no-binary h5py \
      -w "$WH" "h5py==$H5PY_VER"
  fi
  "$PY" -m pip install -q --no-deps --force-reinstall "$WH"/h5py-"$H5PY_VER"-*.whl
fi

# 5. mpidcr itself
"$PY" -m pip install -q -e ".[$EXTRAS]"

"$PY" - <<'PYEOF'
import h5py
from mpi4py import MPI
assert h5py.get_config().mpi, "h5py was built without MPI"
print("[setup] OK: h5py", h5py.__version__, "(parallel HDF5", h5py.version.hdf5_version + ")",
      "| MPI:", MPI.Get_library_version().splitlines()[0].strip())
PYEOF
# 6. numba's cache filled (about a minute the first time, a second after): a first run then
#    reads machine code instead of compiling it
"$PY" -m mpidcr.warmup

say "done in $((SECONDS - t0)) s"
