"""Input and output: FITS warps and manifests in, HDF5 model files and FITS products out.

Knows nothing of MPI: collective writes receive the communicator as an argument.
"""
