"""CKKS crypto foundation on Microsoft SEAL through ``tenseal.sealapi``.

Three key roles have three object types, each in its own module:

* :mod:`.secret` -- :class:`SecretKeyHolder` (clients, key authority): encrypt, decrypt.
* :mod:`.public` -- :class:`PublicKeyEncryptor` (public key only): encrypt.
* :mod:`.aggregate` -- :class:`CiphertextAggregator` (server): parameters only;
  validate, weight and add. It has no decrypt method and cannot load a secret key.

The opt-in ``single-key-compact`` preset has its own two halves:
:mod:`.compact` (clients: encrypt deltas, decrypt sums; needs the secret key) and
:mod:`.compactwire` (both sides: seeds, FFT products, wire formats; no key), with
the server's sums in :mod:`fedhe_common.mlbridge.compact_accumulate`.

The server imports only :mod:`.aggregate`, :mod:`.compactwire` and what they need;
nothing on that path imports :mod:`.secret`.
"""
