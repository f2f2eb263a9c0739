"""Transfer jobs (HETAL) on the server: the owner's encrypted data set and the trainer.

The server holds evaluation keys only (public, relinearisation, Galois): nothing in
this package imports client code or makes a key generator or decryptor.
"""
