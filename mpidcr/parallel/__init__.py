"""The MPI layer: the only part of mpidcr that imports mpi4py.

- :mod:`.comm` — the communicator (or a serial stand-in), abort on error, tile grids
  (imports mpi4py lazily, so it also works without it);
- :mod:`.halo` — exchange of ghost pixels between neighbouring tiles;
- :mod:`.reduce` — patch-wide reductions (Allreduce) behind the core's Reducer interface.
"""
