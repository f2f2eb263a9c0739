"""CKKS crypto foundation on Microsoft SEAL through ``tenseal.sealapi``.

Three key roles have three object types, each in its own module:

* :mod:`.secret` -- :class:`SecretKeyHolder` (clients, key authority): encrypt, decrypt.
* :mod:`.public` -- :class:`PublicKeyEncryptor` (public key only): encrypt.
* :mod:`.aggregate` -- :class:`CiphertextAggregator` (server): parameters only;
  validate, weight and add. It has no decrypt method and cannot load a secret key.

The server imports only :mod:`.aggregate` and what it needs; nothing on that
path imports :mod:`.secret`.
"""
