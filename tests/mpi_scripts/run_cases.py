"""Run under mpiexec: several ``mpidcr run`` cases in one launch, each on its own number of ranks.

argv[1]: a JSON file holding a list of cases ``{"ranks": n, "argv": ["run", ...]}``.  For each case
the first ``n`` ranks form a communicator and run the command line's ``run`` on it (the others
wait without spinning); then every rank moves to the next case.  One launch instead of one per
case: the interpreter, the imports and the kernels are loaded once.
"""

import json
import sys
import time

from mpi4py import MPI

from mpidcr.cli import _dispatch, build_parser
from mpidcr.parallel.comm import MpiComm, SerialComm

world = MPI.COMM_WORLD
with open(sys.argv[1]) as fh:
    cases = json.load(fh)
failures = 0
for case in cases:
    n = int(case["ranks"])
    sub = world.Split(0 if world.rank < n else MPI.UNDEFINED, world.rank)
    if sub != MPI.COMM_NULL:
        comm = MpiComm(sub) if n > 1 else SerialComm()
        code = _dispatch(build_parser().parse_args(["-q", *case["argv"]]), comm)
        failures += code != 0
        sub.Free()
    request = world.Ibarrier()  # idle ranks sleep instead of spinning in a barrier (2 cores, 4 ranks)
    while not request.Test():
        time.sleep(0.005)
sys.exit(1 if world.allreduce(failures) else 0)
