"""Run under mpiexec: build a model, then report which windows this rank read (JSON, one file per rank)."""

import json
import sys

from mpidcr.driver import RunOptions, inputs_from_manifest, on_root, run
from mpidcr.io.configfile import load_config
from mpidcr.io.manifest import read_manifest
from mpidcr.io.warps import READ_STATS
from mpidcr.parallel.comm import get_comm

manifest_path, output, report = sys.argv[1:4]
comm = get_comm()


def load():
    m = read_manifest(manifest_path)
    cfg = load_config(overrides={"regularizeModelFrequency": 0}, base={**m.config, **m.band})
    return inputs_from_manifest(m, cfg)


inputs = on_root(comm, load)
READ_STATS.reset()
run(inputs, RunOptions(output, overwrite=True), comm)
with open(f"{report}.{comm.rank}", "w") as fh:
    json.dump(
        {
            "rank": comm.rank,
            "size": comm.size,
            "bytes": READ_STATS.bytes,
            "windows": [[p, [b.y0, b.y1, b.x0, b.x1]] for p, b in READ_STATS.windows],
        },
        fh,
    )
