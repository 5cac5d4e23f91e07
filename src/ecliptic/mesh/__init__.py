"""The mesh: a distributed file system of pods.

A pod is a daemon that keeps a full replica of the network's metadata (SQLite, last-writer-wins registers
ordered by hybrid logical clocks, exchanged by anti-entropy) and holds the content-addressed blocks of the
files placed on it. Applications reach the network through a pod: the CLI and :mod:`ecliptic.mesh.client`,
a FUSE mount (:mod:`ecliptic.mesh.fuse`) and fsspec (``mesh://``, :mod:`ecliptic.mesh.fsspec`).
"""
