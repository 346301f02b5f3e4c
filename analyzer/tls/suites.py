"""The TLS cipher suites this analyzer knows: names, and for the AEAD ones the parameters that
decryption (decrypt.py) and the key-less size reading (inference.py) both need. One table, read off
the IANA names so that it cannot contradict itself.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

TLS12 = 0x0303
TLS13 = 0x0304

AES_GCM = "AES-GCM"
AES_CCM = "AES-CCM"
CHACHA20_POLY1305 = "ChaCha20-Poly1305"
EXPLICIT_NONCE_SIZE = 8  # TLS 1.2 AES-GCM and AES-CCM: nonce_explicit in the record (RFC 5288 3, RFC 6655 3)


@dataclass(frozen=True)
class Suite:
    code: int
    name: str
    cipher: str
    key_size: int
    tag_size: int
    hash_name: str

    @property
    def version(self) -> int:
        return TLS13 if self.code >> 8 == 0x13 else TLS12

    @property
    def hash_size(self) -> int:
        return hashlib.new(self.hash_name).digest_size


def _suite(code: int, name: str) -> Suite:
    """The suite's parameters read off its IANA name, so the table below cannot contradict itself."""
    if "CHACHA20_POLY1305" in name:
        cipher, key_size = CHACHA20_POLY1305, 32
    else:
        cipher = AES_GCM if "_GCM" in name else AES_CCM
        key_size = 16 if "AES_128" in name else 32
    tag_size = 8 if "CCM_8" in name else 16
    # RFC 5288 and 5289: *_SHA384 suites use SHA-384 for the PRF; every other suite here uses SHA-256
    # (RFC 6655 4 and RFC 7251 2 for CCM, RFC 7905 2 for ChaCha20-Poly1305).
    hash_name = "sha384" if name.endswith("SHA384") else "sha256"
    return Suite(code, name, cipher, key_size, tag_size, hash_name)


SUITES: dict[int, Suite] = {code: _suite(code, name) for code, name in {
    # TLS 1.2 AES-GCM (RFC 5288, RFC 5289)
    0x009C: "TLS_RSA_WITH_AES_128_GCM_SHA256",
    0x009D: "TLS_RSA_WITH_AES_256_GCM_SHA384",
    0x009E: "TLS_DHE_RSA_WITH_AES_128_GCM_SHA256",
    0x009F: "TLS_DHE_RSA_WITH_AES_256_GCM_SHA384",
    0x00A0: "TLS_DH_RSA_WITH_AES_128_GCM_SHA256",
    0x00A1: "TLS_DH_RSA_WITH_AES_256_GCM_SHA384",
    0x00A2: "TLS_DHE_DSS_WITH_AES_128_GCM_SHA256",
    0x00A3: "TLS_DHE_DSS_WITH_AES_256_GCM_SHA384",
    0x00A4: "TLS_DH_DSS_WITH_AES_128_GCM_SHA256",
    0x00A5: "TLS_DH_DSS_WITH_AES_256_GCM_SHA384",
    0x00A6: "TLS_DH_anon_WITH_AES_128_GCM_SHA256",
    0x00A7: "TLS_DH_anon_WITH_AES_256_GCM_SHA384",
    0xC02B: "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    0xC02C: "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    0xC02D: "TLS_ECDH_ECDSA_WITH_AES_128_GCM_SHA256",
    0xC02E: "TLS_ECDH_ECDSA_WITH_AES_256_GCM_SHA384",
    0xC02F: "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    0xC030: "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    0xC031: "TLS_ECDH_RSA_WITH_AES_128_GCM_SHA256",
    0xC032: "TLS_ECDH_RSA_WITH_AES_256_GCM_SHA384",
    # TLS 1.2 AES-CCM (RFC 6655, RFC 7251)
    0xC09C: "TLS_RSA_WITH_AES_128_CCM",
    0xC09D: "TLS_RSA_WITH_AES_256_CCM",
    0xC09E: "TLS_DHE_RSA_WITH_AES_128_CCM",
    0xC09F: "TLS_DHE_RSA_WITH_AES_256_CCM",
    0xC0A0: "TLS_RSA_WITH_AES_128_CCM_8",
    0xC0A1: "TLS_RSA_WITH_AES_256_CCM_8",
    0xC0A2: "TLS_DHE_RSA_WITH_AES_128_CCM_8",
    0xC0A3: "TLS_DHE_RSA_WITH_AES_256_CCM_8",
    0xC0AC: "TLS_ECDHE_ECDSA_WITH_AES_128_CCM",
    0xC0AD: "TLS_ECDHE_ECDSA_WITH_AES_256_CCM",
    0xC0AE: "TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8",
    0xC0AF: "TLS_ECDHE_ECDSA_WITH_AES_256_CCM_8",
    # TLS 1.2 ChaCha20-Poly1305 (RFC 7905)
    0xCCA8: "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    0xCCA9: "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    0xCCAA: "TLS_DHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    # TLS 1.3 (RFC 8446 B.4)
    0x1301: "TLS_AES_128_GCM_SHA256",
    0x1302: "TLS_AES_256_GCM_SHA384",
    0x1303: "TLS_CHACHA20_POLY1305_SHA256",
    0x1304: "TLS_AES_128_CCM_SHA256",
    0x1305: "TLS_AES_128_CCM_8_SHA256",
}.items()}

# Suites seen on AMQP brokers that cannot be decrypted here, named in the reason rather than left as hex.
OTHER_SUITE_NAMES = {
    0x0004: "TLS_RSA_WITH_RC4_128_MD5",
    0x0005: "TLS_RSA_WITH_RC4_128_SHA",
    0x000A: "TLS_RSA_WITH_3DES_EDE_CBC_SHA",
    0x002F: "TLS_RSA_WITH_AES_128_CBC_SHA",
    0x0033: "TLS_DHE_RSA_WITH_AES_128_CBC_SHA",
    0x0035: "TLS_RSA_WITH_AES_256_CBC_SHA",
    0x0039: "TLS_DHE_RSA_WITH_AES_256_CBC_SHA",
    0x003C: "TLS_RSA_WITH_AES_128_CBC_SHA256",
    0x003D: "TLS_RSA_WITH_AES_256_CBC_SHA256",
    0x0067: "TLS_DHE_RSA_WITH_AES_128_CBC_SHA256",
    0x006B: "TLS_DHE_RSA_WITH_AES_256_CBC_SHA256",
    0xC009: "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
    0xC00A: "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
    0xC011: "TLS_ECDHE_RSA_WITH_RC4_128_SHA",
    0xC012: "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA",
    0xC013: "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
    0xC014: "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
    0xC023: "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256",
    0xC024: "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA384",
    0xC027: "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256",
    0xC028: "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA384",
}


def cipher_suite_name(code: int) -> str:
    """The suite's IANA name, or its code in hex for a suite not named here."""
    suite = SUITES.get(code)
    name = suite.name if suite is not None else OTHER_SUITE_NAMES.get(code)
    return f"0x{code:04x}" if name is None else name


def cipher_suite_code_name(code: int) -> str:
    """`0xc02f (TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256)`, or just the hex for a suite not named here."""
    name = cipher_suite_name(code)
    return name if name.startswith("0x") else f"0x{code:04x} ({name})"


def record_overhead(version: int | None, code: int | None) -> int | None:
    """Bytes a protected record's fragment adds to its plaintext under an AEAD suite; None when not
    fixed or not known (CBC suites pad, an unknown suite). TLS 1.3 adds the inner content type
    (RFC 8446 5.2, without padding, which common stacks do not add); TLS 1.2 AES-GCM and AES-CCM send
    an 8-byte explicit nonce in every record (RFC 5288 3, RFC 6655 3); ChaCha20-Poly1305 does not
    (RFC 7905 2)."""
    suite = SUITES.get(code) if code is not None else None
    if suite is None or suite.version != version:
        return None
    if version == TLS13:
        return suite.tag_size + 1
    return suite.tag_size + (0 if suite.cipher == CHACHA20_POLY1305 else EXPLICIT_NONCE_SIZE)
