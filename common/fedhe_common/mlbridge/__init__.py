"""The ML bridge: model state <-> flat vectors, chunking, streaming accumulation.

:mod:`.layout`, :mod:`.chunking` and :mod:`.accumulate` are torch-free (the
server uses them); :mod:`.flatten` needs torch and is for clients.
"""
