"""mpidcr.run on the caller's communicator (every rank calls it): argv manifest output."""

import sys

from mpi4py import MPI

import mpidcr

model = mpidcr.run(sys.argv[1], sys.argv[2], comm=MPI.COMM_WORLD, overwrite=True)
assert model.planes.ndim == 3
