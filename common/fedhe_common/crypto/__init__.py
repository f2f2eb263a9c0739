"""CKKS crypto foundation on Microsoft SEAL through ``tenseal.sealapi``.

Three key roles have three object types, each in its own module:

* :mod:`.secret` -- :class:`SecretKeyHolder` (clients, key authority): encrypt, decrypt.
* :mod:`.public` -- :class:`PublicKeyEncryptor` (public key only): encrypt.
* :mod:`.aggregate` -- :class:`CiphertextAggregator` (server): parameters only;
  validate, weight and add. It has no decrypt method and cannot load a secret key.

The coefficient presets (numpy engine, no CKKS) ``single-key-compact`` (opt-in,
one 32-bit prime, deltas, c0-only sums) and ``single-key-fast`` (exact, two 32-bit
RNS limbs, the server also sums c1) share their key-less half: :mod:`.compactring`
(ring, limbs, seeded a, FFT products, CRT) and :mod:`.compactwire` (wire formats),
with the server's sums in :mod:`fedhe_common.mlbridge.compact_accumulate`. Clients
encrypt and decrypt in :mod:`.compact` and :mod:`.compactfast` (need the secret key).

The server imports only :mod:`.aggregate`, :mod:`.compactwire` and what they need;
nothing on that path imports :mod:`.secret`.
"""
