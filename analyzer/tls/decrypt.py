"""Record decryption for one TLS session whose secrets are in a key log: TLS 1.2 and 1.3 AEAD suites.

Sans-IO like amqp/framing.py: a RecordDecrypter is fed one direction's protected records in order
(content type, version, fragment, as the record layer cut them) and returns (content type, plaintext);
no file, socket or clock inside. Fuzz invariant: any bytes give None or plaintext that authenticated;
an exception escaping decrypt() is a bug.

Where each direction's keys come from:
- TLS 1.2 (RFC 5246 6.3): the key block is PRF(master secret, "key expansion", server random + client
  random), the master secret from the key log's CLIENT_RANDOM line. The caller starts at the first
  record after that direction's ChangeCipherSpec (the encrypted Finished, sequence number 0).
- TLS 1.3 (RFC 8446 7.1-7.3): keys and IVs are expanded from the traffic secrets the key log holds.
  A direction starts on its handshake traffic keys and moves to its application traffic keys after
  the record that carries its Finished; a KeyUpdate moves it to the next generation (RFC 8446 7.2).

Captures lose records, and the sequence number is in no record: the AEAD tag is the sync signal. A
record that does not open at the expected sequence number is tried at the next SEARCH_WINDOW numbers
(first at the one its TLS 1.2 explicit nonce points to, for stacks that count with it: then any gap
costs one try), then under the keys the direction would move to next (application keys after the
handshake ones, the next KeyUpdate generation after those), which covers a lost Finished or KeyUpdate
record. Skipped numbers are counted in records_lost. A record that opens nowhere changes nothing, so a
damaged record costs only itself; after GIVE_UP_SEARCH_AFTER of them in a row the search stops (wrong
keys, or a gap beyond the window) and each record costs one or two tries.

The `cryptography` package does the AEAD work; it is imported when a session's keys are built, so a
capture without TLS never loads it. The key derivations are HMAC, done with hmac and hashlib.
"""
from __future__ import annotations

import hmac
import importlib.util
import itertools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TypeAlias

from analyzer.tls.keylog import (
    CLIENT_HANDSHAKE_TRAFFIC_SECRET,
    CLIENT_RANDOM,
    CLIENT_TRAFFIC_SECRET_0,
    SERVER_HANDSHAKE_TRAFFIC_SECRET,
    SERVER_TRAFFIC_SECRET_0,
)
from analyzer.tls.suites import (
    AES_CCM,
    CHACHA20_POLY1305,
    EXPLICIT_NONCE_SIZE,
    SUITES,
    TLS12,
    TLS13,
    Suite,
    cipher_suite_code_name,
)

# Sequence numbers tried past the expected one before a record counts as not decryptable: enough for
# a capture gap of a few dozen records, and a bound on the work one undecryptable record can cause.
SEARCH_WINDOW = 64
# After this many records in a row open nowhere, the keys are wrong or the gap is beyond the window;
# from then on only the expected number is tried, so a long capture with a wrong key log stays cheap.
GIVE_UP_SEARCH_AFTER = 32

CONTENT_HANDSHAKE = 22
_HANDSHAKE_FINISHED = 20  # handshake message types, RFC 8446 4
_HANDSHAKE_KEY_UPDATE = 24

_RECORD_IV_SIZE = 12  # every AEAD here takes a 96-bit nonce (RFC 5116 5.1, RFC 8439 2.8)
_SALT_SIZE = 4  # ... and the implicit part from the key block
_SEQ_MODULUS = 1 << 64  # sequence numbers and explicit nonces are uint64

# An AEAD open: (nonce, ciphertext with tag, additional data) -> plaintext, or None when the tag fails.
_Open: TypeAlias = Callable[[bytes, bytes, bytes], bytes | None]


# ---- key derivation ---------------------------------------------------------------------------------


def _prf(hash_name: str, secret: bytes, label: bytes, seed: bytes, size: int) -> bytes:
    """TLS 1.2 PRF (RFC 5246 5): P_hash(secret, label + seed), cut to `size`."""
    seed = label + seed
    out = b""
    a = seed
    while len(out) < size:
        a = hmac.digest(secret, a, hash_name)
        out += hmac.digest(secret, a + seed, hash_name)
    return out[:size]


def _hkdf_expand_label(hash_name: str, secret: bytes, label: bytes, size: int) -> bytes:
    """HKDF-Expand-Label(secret, label, "", size) (RFC 8446 7.1), HKDF-Expand as in RFC 5869 2.3.

    Every label used here (key, iv, traffic upd) has an empty context."""
    full_label = b"tls13 " + label
    info = size.to_bytes(2, "big") + bytes([len(full_label)]) + full_label + b"\x00"
    out = b""
    block = b""
    counter = 1
    while len(out) < size:
        block = hmac.digest(secret, block + info + bytes([counter]), hash_name)
        out += block
        counter += 1
    return out[:size]


def _xor_nonce(iv: bytes, seq: int) -> bytes:
    """The per-record nonce: the IV XOR the sequence number padded left (RFC 8446 5.3, RFC 7905 2)."""
    return (int.from_bytes(iv, "big") ^ seq).to_bytes(len(iv), "big")


def _aead_open(cipher: str, key: bytes, tag_size: int) -> _Open:
    # Imported here, not at module level: see the module docstring.
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESCCM, AESGCM, ChaCha20Poly1305

    aead: AESGCM | AESCCM | ChaCha20Poly1305
    if cipher == CHACHA20_POLY1305:
        aead = ChaCha20Poly1305(key)
    elif cipher == AES_CCM:
        aead = AESCCM(key, tag_length=tag_size)
    else:
        aead = AESGCM(key)

    def open_(nonce: bytes, data: bytes, aad: bytes) -> bytes | None:
        try:
            return aead.decrypt(nonce, data, aad)
        except InvalidTag:
            return None

    return open_


# ---- one generation of keys for one direction ---------------------------------------------------------


@dataclass(frozen=True, repr=False)  # no repr: the fields are key material
class _Tls12Keys:
    suite: Suite
    open: _Open
    iv: bytes  # the 4-byte salt (AES-GCM, AES-CCM) or the 12-byte IV (ChaCha20-Poly1305)

    def open_record(self, seq: int, content_type: int, version: int, fragment: bytes) -> bytes | None:
        if self.suite.cipher == CHACHA20_POLY1305:  # RFC 7905 2: no explicit nonce
            nonce, body = _xor_nonce(self.iv, seq), fragment
        else:  # RFC 5288 3, RFC 6655 3: salt + nonce_explicit, which starts the fragment
            if len(fragment) < EXPLICIT_NONCE_SIZE:
                return None
            nonce, body = self.iv + fragment[:EXPLICIT_NONCE_SIZE], fragment[EXPLICIT_NONCE_SIZE:]
        plaintext_size = len(body) - self.suite.tag_size
        if plaintext_size < 0:
            return None
        # RFC 5246 6.2.3.3: additional_data = seq_num + type + version + length (of the plaintext)
        aad = (seq.to_bytes(8, "big") + bytes([content_type]) + version.to_bytes(2, "big")
               + plaintext_size.to_bytes(2, "big"))
        return self.open(nonce, body, aad)

    def explicit_nonce(self, fragment: bytes) -> int | None:
        """The record's nonce_explicit. Stacks make it a counter (OpenSSL: the sequence number for
        AES-CCM, a random start plus the sequence number for AES-GCM), so it tells how many records a
        gap swallowed."""
        if self.suite.cipher == CHACHA20_POLY1305 or len(fragment) < EXPLICIT_NONCE_SIZE:
            return None
        return int.from_bytes(fragment[:EXPLICIT_NONCE_SIZE], "big")


@dataclass(frozen=True, repr=False)  # no repr: the fields are key material
class _Tls13Keys:
    suite: Suite
    secret: bytes  # the traffic secret the key and IV come from: the next KeyUpdate generation needs it
    open: _Open
    iv: bytes

    def open_record(self, seq: int, content_type: int, version: int, fragment: bytes) -> bytes | None:
        # At least the tag and the inner content type byte (RFC 8446 5.2).
        if len(fragment) < self.suite.tag_size + 1:
            return None
        # RFC 8446 5.2: additional_data is the record header as sent.
        aad = bytes([content_type]) + version.to_bytes(2, "big") + len(fragment).to_bytes(2, "big")
        return self.open(_xor_nonce(self.iv, seq), fragment, aad)

    def explicit_nonce(self, fragment: bytes) -> int | None:
        return None

    def next_generation(self) -> _Tls13Keys:
        """The keys after a KeyUpdate (RFC 8446 7.2): application_traffic_secret_N+1."""
        secret = _hkdf_expand_label(self.suite.hash_name, self.secret, b"traffic upd", self.suite.hash_size)
        return _tls13_keys(self.suite, secret)


_Keys: TypeAlias = _Tls12Keys | _Tls13Keys


def _tls13_keys(suite: Suite, secret: bytes) -> _Tls13Keys:
    """RFC 8446 7.3: key = HKDF-Expand-Label(secret, "key", "", key_length), iv likewise with "iv"."""
    key = _hkdf_expand_label(suite.hash_name, secret, b"key", suite.key_size)
    iv = _hkdf_expand_label(suite.hash_name, secret, b"iv", _RECORD_IV_SIZE)
    return _Tls13Keys(suite, secret, _aead_open(suite.cipher, key, suite.tag_size), iv)


def _tls12_keys(suite: Suite, master_secret: bytes, client_random: bytes, server_random: bytes,
                ) -> tuple[_Tls12Keys, _Tls12Keys]:
    """(client write, server write) keys from the key block (RFC 5246 6.3); AEAD suites have no MAC keys
    (RFC 5246 6.2.3.3), ChaCha20-Poly1305 a 12-byte IV (RFC 7905 2), the others a 4-byte salt."""
    iv_size = _RECORD_IV_SIZE if suite.cipher == CHACHA20_POLY1305 else _SALT_SIZE
    key_size = suite.key_size
    block = _prf(suite.hash_name, master_secret, b"key expansion", server_random + client_random,
                 2 * key_size + 2 * iv_size)
    client_key, server_key = block[:key_size], block[key_size:2 * key_size]
    client_iv, server_iv = block[2 * key_size:2 * key_size + iv_size], block[2 * key_size + iv_size:]
    return (_Tls12Keys(suite, _aead_open(suite.cipher, client_key, suite.tag_size), client_iv),
            _Tls12Keys(suite, _aead_open(suite.cipher, server_key, suite.tag_size), server_iv))


# ---- TLS 1.3 handshake message boundaries ------------------------------------------------------------


@dataclass
class _HandshakeWalker:
    """Message boundaries in one direction's decrypted handshake bytes (type, 24-bit length, body;
    RFC 8446 4), bodies counted through, never kept: a Certificate can span records."""

    _header: bytes = b""
    _body_left: int = 0

    def reset(self) -> None:
        """After lost records the position is unknown; assume the next record starts a message."""
        self._header, self._body_left = b"", 0

    def feed(self, data: bytes) -> list[int]:
        """The types of the messages that start in `data`."""
        types = []
        pos = 0
        while pos < len(data):
            if self._body_left:
                taken = min(self._body_left, len(data) - pos)
                self._body_left -= taken
                pos += taken
                continue
            needed = 4 - len(self._header)
            self._header += data[pos:pos + needed]
            pos += needed
            if len(self._header) == 4:
                types.append(self._header[0])
                self._body_left = int.from_bytes(self._header[1:], "big")
                self._header = b""
        return types

    @property
    def at_boundary(self) -> bool:
        return not self._header and not self._body_left


# ---- the decrypter ------------------------------------------------------------------------------------


class RecordDecrypter:
    """One direction of one TLS session. Fed that direction's protected records in order.

    Built by session_decrypters(). `then`: for a TLS 1.3 direction starting on its handshake keys,
    the application keys it moves to after its Finished."""

    def __init__(self, keys: _Keys, *, then: _Tls13Keys | None = None) -> None:
        self._keys: _Keys = keys
        self._in_handshake = then is not None  # TLS 1.3, still on the handshake traffic keys
        self._next: _Keys | None = then  # the keys this direction moves to next, built on first need
        self._seq = 0
        self._records_lost = 0
        self._failures_in_a_row = 0
        self._nonce_offset = 0  # TLS 1.2: nonce_explicit - seq in the last record opened (mod 2**64)
        self._walker = _HandshakeWalker()

    @property
    def records_lost(self) -> int:
        """Sequence numbers skipped to authenticate a record after a gap: a lower bound of the records
        lost, since records lost under keys the direction then left cannot be counted."""
        return self._records_lost

    def __repr__(self) -> str:
        keys = "handshake" if self._in_handshake else "application"
        return (f"<RecordDecrypter {self._keys.suite.name} {keys} keys, seq {self._seq},"
                f" records_lost {self._records_lost}>")

    def decrypt(self, content_type: int, version: int, fragment: bytes) -> tuple[int, bytes] | None:
        """(content type, plaintext) of one record, or None when no key authenticates it (wrong keys,
        damaged record). For TLS 1.3 the returned content type is the inner one (handshake 22, alert 21,
        application data 23) with padding removed."""
        try:
            return self._decrypt(content_type, version, fragment)
        except Exception:  # noqa: BLE001 (the fuzz invariant, module docstring: capture bytes never crash the analysis)
            return None

    def _decrypt(self, content_type: int, version: int, fragment: bytes) -> tuple[int, bytes] | None:
        if not (0 <= content_type <= 0xFF and 0 <= version <= 0xFFFF):
            return None
        fragment = bytes(fragment)
        hit = self._search(self._keys, self._seq, fragment, content_type, version)
        if hit is not None:
            seq, plaintext = hit
            lost = seq - self._seq
        else:
            upcoming = self._upcoming_keys()
            hit = None if upcoming is None else self._search(upcoming, 0, fragment, content_type, version)
            if upcoming is None or hit is None:
                self._failures_in_a_row += 1
                return None
            seq, plaintext = hit
            lost = seq
            self._move_to(upcoming)
        self._failures_in_a_row = 0
        nonce = self._keys.explicit_nonce(fragment)
        if nonce is not None:
            self._nonce_offset = (nonce - seq) % _SEQ_MODULUS
        self._seq = seq + 1
        self._records_lost += lost
        if lost:
            self._walker.reset()
        if isinstance(self._keys, _Tls12Keys):
            return content_type, plaintext
        return self._inner(plaintext)

    def _search(self, keys: _Keys, first: int, fragment: bytes, content_type: int, version: int,
                ) -> tuple[int, bytes] | None:
        """The first sequence number from `first` under which the record opens, with its plaintext."""
        plaintext = keys.open_record(first, content_type, version, fragment)
        if plaintext is not None:
            return first, plaintext
        window = SEARCH_WINDOW if self._failures_in_a_row < GIVE_UP_SEARCH_AFTER else 0
        candidates: Iterable[int] = range(first + 1, first + 1 + window)
        # Where the explicit nonce counts records, the gap is known: one try, whatever its size.
        nonce = keys.explicit_nonce(fragment)
        hint = None if nonce is None else (nonce - self._nonce_offset) % _SEQ_MODULUS
        if hint is not None and hint > first:
            candidates = itertools.chain((hint,), (seq for seq in candidates if seq != hint))
        for seq in candidates:
            plaintext = keys.open_record(seq, content_type, version, fragment)
            if plaintext is not None:
                return seq, plaintext
        return None

    def _upcoming_keys(self) -> _Keys | None:
        """The keys this direction moves to next: TLS 1.3 only (a TLS 1.2 session keeps its keys)."""
        if self._next is None and isinstance(self._keys, _Tls13Keys) and not self._in_handshake:
            self._next = self._keys.next_generation()
        return self._next

    def _move_to(self, keys: _Keys) -> None:
        self._keys = keys
        self._in_handshake = False
        self._next = None
        self._seq = 0
        self._walker.reset()

    def _inner(self, plaintext: bytes) -> tuple[int, bytes] | None:
        """TLSInnerPlaintext (RFC 8446 5.2): content, then the real type, then zero padding."""
        unpadded = plaintext.rstrip(b"\x00")
        if not unpadded:
            return None  # no content type: a protocol error the peer answers with an alert (RFC 8446 5.4)
        inner_type, content = unpadded[-1], unpadded[:-1]
        if inner_type == CONTENT_HANDSHAKE:
            self._follow_handshake(content)
        return inner_type, content

    def _follow_handshake(self, content: bytes) -> None:
        """Change keys after the record that ends with Finished (handshake to application keys, RFC 8446
        7.3) or KeyUpdate (next generation, 7.2). A handshake message never spans a key change (5.1), so
        one that does not end its record means the framing is lost: the keys stay, and decrypt()'s
        fallback finds the new ones if the change was real."""
        types = self._walker.feed(content)
        if not self._walker.at_boundary:
            return
        expected = _HANDSHAKE_FINISHED if self._in_handshake else _HANDSHAKE_KEY_UPDATE
        upcoming = self._upcoming_keys() if expected in types else None
        if upcoming is not None:
            self._move_to(upcoming)


# ---- a session's two directions ---------------------------------------------------------------------------


def session_decrypters(*, version: int, cipher_suite: int, client_random: bytes, server_random: bytes,
                       secrets: Mapping[str, bytes]) -> tuple[RecordDecrypter, RecordDecrypter] | str:
    """(client->server decrypter, server->client decrypter), or a one-line reason why not
    (e.g. "cipher suite 0x002f (TLS_RSA_WITH_AES_128_CBC_SHA) is not supported; AEAD suites only",
    "the key log has no TLS 1.3 traffic secrets for this session"). `version` is the negotiated one
    (0x0303 or 0x0304, from ServerHello / supported_versions). Reasons never quote key material."""
    suite = SUITES.get(cipher_suite)
    if version not in (TLS12, TLS13):
        return f"TLS version 0x{version:04x} is not supported; TLS 1.2 and 1.3 only"
    if suite is None:
        return (f"cipher suite {cipher_suite_code_name(cipher_suite)} is not supported;"
                " AEAD suites only (AES-GCM, AES-CCM, ChaCha20-Poly1305)")
    if suite.version != version:
        return f"cipher suite {cipher_suite_code_name(cipher_suite)} cannot be negotiated in {_version_name(version)}"
    if importlib.util.find_spec("cryptography") is None:
        return "decrypting TLS needs the cryptography package (pip install cryptography)"
    secrets = {label: bytes(secret) for label, secret in secrets.items()}
    if version == TLS12:
        return _tls12_session(suite, bytes(client_random), bytes(server_random), secrets)
    return _tls13_session(suite, secrets)


def _version_name(version: int) -> str:
    return "TLS 1.3" if version == TLS13 else "TLS 1.2"


def _tls12_session(suite: Suite, client_random: bytes, server_random: bytes, secrets: dict[str, bytes],
                   ) -> tuple[RecordDecrypter, RecordDecrypter] | str:
    master_secret = secrets.get(CLIENT_RANDOM)
    if master_secret is None:
        return "the key log has no CLIENT_RANDOM line (TLS 1.2 master secret) for this session"
    if len(master_secret) != 48:  # RFC 5246 8.1
        return f"the key log's TLS 1.2 master secret for this session is {len(master_secret)} bytes, not 48"
    if len(client_random) != 32 or len(server_random) != 32:
        return "the hello randoms are not 32 bytes each; the TLS 1.2 key block cannot be derived"
    client_keys, server_keys = _tls12_keys(suite, master_secret, client_random, server_random)
    return RecordDecrypter(client_keys), RecordDecrypter(server_keys)


def _tls13_session(suite: Suite, secrets: dict[str, bytes]) -> tuple[RecordDecrypter, RecordDecrypter] | str:
    labels = (CLIENT_HANDSHAKE_TRAFFIC_SECRET, SERVER_HANDSHAKE_TRAFFIC_SECRET,
              CLIENT_TRAFFIC_SECRET_0, SERVER_TRAFFIC_SECRET_0)
    present = [label for label in labels if label in secrets]
    if not present:
        return "the key log has no TLS 1.3 traffic secrets for this session"
    missing = [label for label in (CLIENT_TRAFFIC_SECRET_0, SERVER_TRAFFIC_SECRET_0) if label not in secrets]
    if missing:
        return f"the key log has no {' or '.join(missing)} for this session; the application data stays encrypted"
    for label in present:
        if len(secrets[label]) != suite.hash_size:  # RFC 8446 7.1: a traffic secret is Hash.length bytes
            return (f"the key log's {label} for this session is {len(secrets[label])} bytes but"
                    f" {suite.name} needs {suite.hash_size}: the key log does not match the handshake")
    client = _tls13_direction(suite, secrets.get(CLIENT_HANDSHAKE_TRAFFIC_SECRET), secrets[CLIENT_TRAFFIC_SECRET_0])
    server = _tls13_direction(suite, secrets.get(SERVER_HANDSHAKE_TRAFFIC_SECRET), secrets[SERVER_TRAFFIC_SECRET_0])
    return client, server


def _tls13_direction(suite: Suite, handshake_secret: bytes | None, application_secret: bytes) -> RecordDecrypter:
    application = _tls13_keys(suite, application_secret)
    if handshake_secret is None:
        return RecordDecrypter(application)
    return RecordDecrypter(_tls13_keys(suite, handshake_secret), then=application)
