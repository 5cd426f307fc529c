"""Key pairs: RSA 2048 with public exponent 65537 (RFC 7935 §3), one per certificate.

Keys come from the operating system's random source through ``cryptography``, which cannot
generate keys from a seed: they (and so key identifiers and signatures) differ between runs even
with the same ``--seed``.  Nothing the generator decides (names, serials, resources, times, file
names) depends on a key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

__all__ = ["KEY_SIZE", "KeyPair", "new_key"]

KEY_SIZE: Final = 2048  # RFC 7935 §3
_EXPONENT: Final = 65537


@dataclass(frozen=True)
class KeyPair:
    private: rsa.RSAPrivateKey

    @property
    def public(self) -> rsa.RSAPublicKey:
        return self.private.public_key()

    @property
    def ski(self) -> bytes:
        """SHA-1 of the subjectPublicKey bits (RFC 6487 §4.8.2, RFC 5280 §4.2.1.2 method 1)."""
        return x509.SubjectKeyIdentifier.from_public_key(self.public).digest

    def spki_der(self) -> bytes:
        """SubjectPublicKeyInfo, DER (for TALs, RFC 8630 §2.2)."""
        return self.public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def sign(self, data: bytes) -> bytes:
        """RSASSA-PKCS1-v1_5 with SHA-256 (RFC 7935 §2)."""
        return self.private.sign(data, padding.PKCS1v15(), hashes.SHA256())


def new_key() -> KeyPair:
    return KeyPair(rsa.generate_private_key(public_exponent=_EXPONENT, key_size=KEY_SIZE))
