"""Run under mpiexec: the CLI's run, with reading a warp failing on one rank only."""

import sys

import mpidcr.driver as driver
from mpidcr.cli import main
from mpidcr.errors import InputError
from mpidcr.parallel.comm import get_comm

fail_rank = int(sys.argv[1])
real = driver.read_window


def failing(info, box, planes, out=None):
    if get_comm().rank == fail_rank:
        raise InputError(f"{info.path}: cannot read pixels (simulated failure)")
    return real(info, box, planes, out=out)


driver.read_window = failing
sys.exit(main(sys.argv[2:]))
