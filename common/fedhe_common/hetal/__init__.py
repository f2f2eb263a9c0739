"""HETAL: a server trains a softmax head on CKKS-encrypted features (no secret key here).

Secret-key code (key generation, decryption, the data owner's side) lives in
``fedhe_client.transfer``; everything in this package runs on the server too.
"""
