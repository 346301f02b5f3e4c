"""TLS decryption with a key log (analyzer/tls/keylog.py, analyzer/tls/decrypt.py).

Three sources of protected records:
- RFC 8448 section 3 (the IETF's "Simple 1-RTT Handshake" trace, TLS_AES_128_GCM_SHA256): its
  published traffic secrets, keys, IVs and protected records, both directions.
- Real sessions made at test time: two Python ssl.SSLObjects over MemoryBIOs (TLS 1.2 with each
  AEAD suite OpenSSL offers forced by set_ciphers, TLS 1.3 with Python's default suite), and, for
  every TLS 1.3 suite and KeyUpdate (which SSLObject cannot send), `openssl s_client` and
  `openssl s_server` talking through a relay in this process. The wire bytes are cut into records
  here, the randoms and the suite read from the plaintext hellos, and the key log is the one the
  client wrote: the decrypted application data must be what was sent.
- Fuzzing (hypothesis): garbage records and key logs never raise, never disturb the state.

Losses are simulated by dropping records from a real session's list.
"""
from __future__ import annotations

import contextlib
import datetime
import os
import select
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analyzer.tls.decrypt import (
    GIVE_UP_SEARCH_AFTER,
    SEARCH_WINDOW,
    RecordDecrypter,
    _hkdf_expand_label,
    _prf,
    session_decrypters,
)
from analyzer.tls.keylog import KeyLog
from analyzer.tls.suites import SUITES, cipher_suite_code_name

REPO = Path(__file__).resolve().parent.parent

HANDSHAKE, ALERT, APPLICATION_DATA, CHANGE_CIPHER_SPEC = 22, 21, 23, 20
TLS12, TLS13 = 0x0303, 0x0304

# What the client and the server send: an AMQP 0-9-1 protocol header, then frames (method frames as
# raw bytes, a heartbeat, and a body frame larger than one TLS record, so application data spans records).
AMQP_HEADER = b"AMQP\x00\x00\x09\x01"
HEARTBEAT = b"\x08\x00\x00\x00\x00\x00\x00\xce"
CONNECTION_TUNE_OK = bytes.fromhex("01000000000c000a001f07ff00020000003cce")
BODY = b"\x03\x00\x01" + struct.pack("!I", 40_000) + bytes(range(256)) * 156 + b"\x00" * 64 + b"\xce"
CLIENT_SENDS = [AMQP_HEADER, CONNECTION_TUNE_OK, HEARTBEAT, BODY]
SERVER_SENDS = [bytes.fromhex("01000000000c000a001e07ff00020000003cce"), HEARTBEAT, BODY[::-1]]

Record = tuple[int, int, bytes]  # content type, version, fragment


# ---- RFC 8448 section 3 ----------------------------------------------------------------------------------

h = bytes.fromhex
RFC8448_CLIENT_RANDOM = h("cb34ecb1e78163ba1c38c6dacb196a6dffa21a8d9912ec18a2ef6283024dece7")
RFC8448_SERVER_RANDOM = h("a6af06a4121860dc5e6e60249cd34c95930c8ac5cb1434dac155772ed3e26928")
RFC8448_SECRETS = {
    "CLIENT_HANDSHAKE_TRAFFIC_SECRET": h("b3eddb126e067f35a780b3abf45e2d8f3b1a950738f52e9600746a0e27a55a21"),
    "SERVER_HANDSHAKE_TRAFFIC_SECRET": h("b67b7d690cc16c4e75e54213cb2d37b4e9c912bcded9105d42befd59d391ad38"),
    "CLIENT_TRAFFIC_SECRET_0": h("9e40646ce79a7f9dc05af8889bce6552875afa0b06df0087f792ebb7c17504a5"),
    "SERVER_TRAFFIC_SECRET_0": h("a11af9f05531f856ad47116b45a950328204b4f44bfb6b3a4b4f1f3fcb631643"),
}
# (secret label, key, iv) as the trace shows them ("derive write traffic keys for ...")
RFC8448_KEYS = [
    ("SERVER_HANDSHAKE_TRAFFIC_SECRET", "3fce516009c21727d0f2e4e86ee403bc", "5d313eb2671276ee13000b30"),
    ("CLIENT_HANDSHAKE_TRAFFIC_SECRET", "dbfaa693d1762c5b666af5d950258d01", "5bd3c71b836e0b76bb73265f"),
    ("SERVER_TRAFFIC_SECRET_0", "9f02283b6c9c07efc26bb9f2ac92e356", "cf782b88dd83549aadf1e984"),
    ("CLIENT_TRAFFIC_SECRET_0", "17422dda596ed5d9acd890e3c63f5051", "5b78923dee08579033e523d9"),
]
# {server} send handshake record: EncryptedExtensions, Certificate, CertificateVerify, Finished
RFC8448_SERVER_HANDSHAKE_RECORD = h(
    "17030302a2d1ff334a56f5bff6594a07cc87b580233f500f45e489e7f33af35edf7869fcf40aa40aa2b8ea73f848a7ca07612ef9f945cb960b4068905123ea78b111b429ba9191cd05d2a389280f526134aadc7fc78c4b729df828b5ecf7b13bd9aefb0e57f271585b8ea9bb355c7c79020716cfb9b1183ef3ab20e37d57a6b9d7477609aee6e122a4cf51427325250c7d0e509289444c9b3a648f1d71035d2ed65b0e3cdd0cbae8bf2d0b227812cbb360987255cc744110c453baa4fcd610928d809810e4b7ed1a8fd991f06aa6248204797e36a6a73b70a2559c09ead686945ba246ab66e5edd8044b4c6de3fcf2a89441ac66272fd8fb330ef8190579b3684596c960bd596eea520a56a8d650f563aad27409960dca63d3e688611ea5e22f4415cf9538d51a200c27034272968a264ed6540c84838d89f72c24461aad6d26f59ecaba9acbbb317b66d902f4f292a36ac1b639c637ce343117b659622245317b49eeda0c6258f100d7d961ffb138647e92ea330faeea6dfa31c7a84dc3bd7e1b7a6c7178af36879018e3f252107f243d243dc7339d5684c8b0378bf30244da8c87c843f5e56eb4c5e8280a2b48052cf93b16499a66db7cca71e4599426f7d461e66f99882bd89fc50800becca62d6c74116dbd2972fda1fa80f85df881edbe5a37668936b335583b599186dc5c6918a396fa48a181d6b6fa4f9d62d513afbb992f2b992f67f8afe67f76913fa388cb5630c8ca01e0c65d11c66a1e2ac4c85977b7c7a6999bbf10dc35ae69f5515614636c0b9b68c19ed2e31c0b3b66763038ebba42f3b38edc0399f3a9f23faa63978c317fc9fa66a73f60f0504de93b5b845e275592c12335ee340bbc4fddd502784016e4b3be7ef04dda49f4b440a30cb5d2af939828fd4ae3794e44f94df5a631ede42c1719bfdabf0253fe5175be898e750edc53370d2b"
)
RFC8448_ENCRYPTED_EXTENSIONS = h("080000240022000a00140012001d00170018001901000101010201030104001c0002400100000000")
RFC8448_SERVER_FINISHED = h("140000209b9b141d906337fbd2cbdce71df4deda4ab42c309572cb7fffee5454b78f0718")
# {server} send handshake record: NewSessionTicket (under the application keys, seq 0)
RFC8448_SERVER_TICKET_RECORD = h(
    "17030300de3a6b8f90414a97d6959c3487680de5134a2b240e6cffac116e95d41d6af8f6b580dcf3d11d63c758db289a015940252f55713e061dc13e078891a38efbcf5753ad8ef170ad3c7353d16d9da773b9ca7f2b9fa1b6c0d4a3d03f75e09c30ba1e62972ac46f75f7b981be63439b2999ce13064615139891d5e4c5b406f16e3fc181a77ca475840025db2f0a77f81b5ab05b94c01346755f69232c86519d86cbeeac87aac347d143f9605d64f650db4d023e70e952ca49fe5137121c74bc2697687e248746d6df353005f3bce18696129c8153556b3b6c6779b37bf15985684f"
)
# {client} send handshake record: Finished
RFC8448_CLIENT_FINISHED_RECORD = h("170303003575ec4dc238cce60b298044a71e219c56cc77b0517fe9b93c7a4bfc44d87f38f80338ac98fc46deb384bd1caeacab6867d726c40546")
RFC8448_CLIENT_FINISHED = h("14000020a8ec436d677634ae525ac1fcebe11a039ec17694fac6e98527b642f2edd5ce61")
# {client} / {server} send application_data record: the 50 bytes 00..31
RFC8448_CLIENT_DATA_RECORD = h("1703030043a23f7054b62c94d0affafe8228ba55cbefacea42f914aa66bcab3f2b9819a8a5b46b395bd54a9a20441e2b62974e1f5a6292a2977014bd1e3deae63aeebb21694915e4")
RFC8448_SERVER_DATA_RECORD = h("17030300432e937e11ef4ac740e538ad36005fc4a46932fc3225d05f82aa1b36e30efaf97d90e6dffc602dcb501a59a8fcc49c4bf2e5f0a21c0047c2abf332540dd032e167c2955d")
RFC8448_DATA = bytes(range(0x32))
# {client} / {server} send alert record: close_notify
RFC8448_CLIENT_ALERT_RECORD = h("1703030013c9872760655666b74d7ff1153efd6db6d0b0e3")
RFC8448_SERVER_ALERT_RECORD = h("1703030013b58fd67166ebf599d24720cfbe7efa7a8864a9")


def record(wire: bytes) -> Record:
    """(type, version, fragment) of one whole record."""
    content_type, version, length = struct.unpack_from("!BHH", wire)
    assert len(wire) == 5 + length
    return content_type, version, wire[5:]


def rfc8448_decrypters(secrets: dict[str, bytes] | None = None) -> tuple[RecordDecrypter, RecordDecrypter]:
    made = session_decrypters(version=TLS13, cipher_suite=0x1301, client_random=RFC8448_CLIENT_RANDOM,
                              server_random=RFC8448_SERVER_RANDOM, secrets=RFC8448_SECRETS if secrets is None else secrets)
    assert not isinstance(made, str), made
    return made


def handshake_messages(data: bytes) -> list[tuple[int, int]]:
    """(type, body length) of each whole handshake message in `data`."""
    out, pos = [], 0
    while pos + 4 <= len(data):
        length = int.from_bytes(data[pos + 1:pos + 4], "big")
        out.append((data[pos], length))
        pos += 4 + length
    assert pos == len(data)
    return out


@pytest.mark.parametrize(("label", "key", "iv"), RFC8448_KEYS)
def test_rfc8448_traffic_keys(label, key, iv):
    secret = RFC8448_SECRETS[label]
    assert _hkdf_expand_label("sha256", secret, b"key", 16).hex() == key
    assert _hkdf_expand_label("sha256", secret, b"iv", 12).hex() == iv


def test_rfc8448_server_records():
    _, server = rfc8448_decrypters()
    content_type, flight = server.decrypt(*record(RFC8448_SERVER_HANDSHAKE_RECORD))
    assert content_type == HANDSHAKE
    assert flight.startswith(RFC8448_ENCRYPTED_EXTENSIONS) and flight.endswith(RFC8448_SERVER_FINISHED)
    assert [t for t, _ in handshake_messages(flight)] == [8, 11, 15, 20]  # EE, Certificate, CertificateVerify, Finished
    # After its Finished the server is on its application keys, sequence number 0.
    content_type, ticket = server.decrypt(*record(RFC8448_SERVER_TICKET_RECORD))
    assert (content_type, handshake_messages(ticket)) == (HANDSHAKE, [(4, 0xC9)])  # NewSessionTicket
    assert server.decrypt(*record(RFC8448_SERVER_DATA_RECORD)) == (APPLICATION_DATA, RFC8448_DATA)
    assert server.decrypt(*record(RFC8448_SERVER_ALERT_RECORD)) == (ALERT, b"\x01\x00")  # warning, close_notify
    assert server.records_lost == 0


def test_rfc8448_client_records():
    client, _ = rfc8448_decrypters()
    assert client.decrypt(*record(RFC8448_CLIENT_FINISHED_RECORD)) == (HANDSHAKE, RFC8448_CLIENT_FINISHED)
    assert client.decrypt(*record(RFC8448_CLIENT_DATA_RECORD)) == (APPLICATION_DATA, RFC8448_DATA)
    assert client.decrypt(*record(RFC8448_CLIENT_ALERT_RECORD)) == (ALERT, b"\x01\x00")
    assert client.records_lost == 0


def test_rfc8448_without_handshake_secrets():
    """A key log with only the application secrets: the handshake records stay closed, the rest opens."""
    secrets = {k: v for k, v in RFC8448_SECRETS.items() if "HANDSHAKE" not in k}
    client, server = rfc8448_decrypters(secrets)
    assert server.decrypt(*record(RFC8448_SERVER_HANDSHAKE_RECORD)) is None
    assert server.decrypt(*record(RFC8448_SERVER_TICKET_RECORD))[0] == HANDSHAKE
    assert server.decrypt(*record(RFC8448_SERVER_DATA_RECORD)) == (APPLICATION_DATA, RFC8448_DATA)
    assert client.decrypt(*record(RFC8448_CLIENT_FINISHED_RECORD)) is None
    assert client.decrypt(*record(RFC8448_CLIENT_DATA_RECORD)) == (APPLICATION_DATA, RFC8448_DATA)
    assert (client.records_lost, server.records_lost) == (0, 0)


def test_rfc8448_lost_finished_record():
    """The record with the Finished lost: the handshake keys fail, the application keys open the next."""
    client, server = rfc8448_decrypters()
    assert server.decrypt(*record(RFC8448_SERVER_DATA_RECORD)) == (APPLICATION_DATA, RFC8448_DATA)
    assert server.records_lost == 1  # the ticket, at application seq 0
    assert client.decrypt(*record(RFC8448_CLIENT_ALERT_RECORD)) == (ALERT, b"\x01\x00")
    assert client.records_lost == 1


def test_tls12_prf_vectors():
    """The P_SHA256 and P_SHA384 vectors circulated on the IETF TLS list (tls/current/msg03416)."""
    assert _prf("sha256", h("9bbe436ba940f017b17652849a71db35"), b"test label", h("a0ba9f936cda311827a6f796ffd5198c"), 100).hex() == (
        "e3f229ba727be17b8d122620557cd453c2aab21d07c3d495329b52d4e61edb5a6b301791e90d35c9c9a46b4e14baf9af"
        "0fa022f7077def17abfd3797c0564bab4fbc91666e9def9b97fce34f796789baa48082d122ee42c5a72e5a5110fff70187347b66")
    assert _prf("sha384", h("b80b733d6ceefcdc71566ea48e5567df"), b"test label", h("cd665cf6a8447dd6ff8b27555edb7465"), 148).hex() == (
        "7b0c18e9ced410ed1804f2cfa34a336a1c14dffb4900bb5fd7942107e81c83cde9ca0faa60be9fe34f82b1233c9146a0"
        "e534cb400fed2700884f9dc236f80edd8bfa961144c9e8d792eca722a7b32fc3d416d473ebc2c5fd4abfdad05d918425"
        "9b5bf8cd4d90fa0d31e2dec479e4f1a26066f2eea9a69236a3e52655c9e9aee691c8f3a26854308d5eaa3be85e0990703d73e56f")


# ---- real sessions -----------------------------------------------------------------------------------

# RFC 7919 ffdhe2048, for the DHE suites (OpenSSL negotiates them only with parameters set).
FFDHE2048_PEM = b"""-----BEGIN DH PARAMETERS-----
MIIBCAKCAQEA//////////+t+FRYortKmq/cViAnPTzx2LnFg84tNpWp4TZBFGQz
+8yTnc4kmz75fS/jY2MMddj2gbICrsRhetPfHtXV/WVhJDP1H18GbtCFY2VVPe0a
87VXE15/V8k1mE8McODmi3fipona8+/och3xWKE2rec1MKzKT0g6eXq8CrGCsyT7
YdEIqUuyyOP7uWrat2DX9GgdT0Kj3jlN9K5W7edjcrsZCwenyO4KbXCeAvzhzffi
7MA0BM0oNC9hkXL+nOmFg/+OTxIy7vKBg8P+OxtMb61zO7X8vC7CIAXFjvGDfRaD
ssbzSibBsu/6iGtCOGEoXJf//////////wIBAg==
-----END DH PARAMETERS-----
"""


@dataclass(frozen=True)
class Certs:
    rsa: tuple[Path, Path]  # certificate, key
    ec: tuple[Path, Path]
    dh_params: Path


def _self_signed(key, directory: Path, name: str) -> tuple[Path, Path]:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Certs:
    directory = tmp_path_factory.mktemp("tls-certs")
    dh_params = directory / "ffdhe2048.pem"
    dh_params.write_bytes(FFDHE2048_PEM)
    return Certs(_self_signed(rsa.generate_private_key(public_exponent=65537, key_size=2048), directory, "rsa"),
                 _self_signed(ec.generate_private_key(ec.SECP256R1()), directory, "ec"), dh_params)


def split_records(stream: bytes) -> list[Record]:
    """A direction's bytes cut into records at their 5-byte headers (RFC 5246 6.2.1, RFC 8446 5.1)."""
    records, pos = [], 0
    while pos + 5 <= len(stream):
        content_type, version, length = struct.unpack_from("!BHH", stream, pos)
        records.append((content_type, version, stream[pos + 5:pos + 5 + length]))
        pos += 5 + length
    assert pos == len(stream), "the stream ends inside a record"
    return records


@dataclass
class Session:
    """One session's wire bytes, what each side sent, and the client's key log."""

    c2s: bytes
    s2c: bytes
    client_sent: bytes
    server_sent: bytes
    keylog: bytes
    flights: list[tuple[str, bytes]] = field(default_factory=list)  # the interleaving, when known

    @property
    def hellos(self) -> tuple[bytes, bytes, int, int]:
        """(client random, server random, cipher suite, negotiated version) from the plaintext hellos
        (RFC 8446 4.1.2, 4.1.3, 4.2.1)."""
        client_hello = split_records(self.c2s)[0][2]
        server_hello = split_records(self.s2c)[0][2]
        assert (client_hello[0], server_hello[0]) == (1, 2)
        end = 4 + int.from_bytes(server_hello[1:4], "big")
        version = int.from_bytes(server_hello[4:6], "big")
        pos = 39 + server_hello[38]  # past the legacy session id
        suite = int.from_bytes(server_hello[pos:pos + 2], "big")
        pos += 3  # suite, compression method
        if pos < end:
            pos += 2  # extensions length
            while pos < end:
                ext_type, ext_len = struct.unpack_from("!HH", server_hello, pos)
                if ext_type == 0x002B:  # supported_versions: the TLS 1.3 version
                    version = int.from_bytes(server_hello[pos + 4:pos + 6], "big")
                pos += 4 + ext_len
        return client_hello[6:38], server_hello[6:38], suite, version

    def protected(self, direction: str) -> list[Record]:
        """The records a decrypter is fed: after the ChangeCipherSpec (TLS 1.2), the outer type 23 ones (1.3)."""
        records = split_records(self.c2s if direction == "c2s" else self.s2c)
        if self.hellos[3] == TLS13:
            return [r for r in records if r[0] == APPLICATION_DATA]
        ccs = next(i for i, r in enumerate(records) if r[0] == CHANGE_CIPHER_SPEC)
        return records[ccs + 1:]

    def secrets(self) -> dict[str, bytes]:
        keylog = KeyLog.parse(self.keylog)
        assert keylog.bad_lines == 0
        secrets = keylog.secrets_for(self.hellos[0])
        assert secrets is not None, "the key log does not know this session"
        return secrets

    def decrypters(self, secrets: dict[str, bytes] | None = None) -> tuple[RecordDecrypter, RecordDecrypter]:
        client_random, server_random, suite, version = self.hellos
        made = session_decrypters(version=version, cipher_suite=suite, client_random=client_random,
                                  server_random=server_random, secrets=self.secrets() if secrets is None else secrets)
        assert not isinstance(made, str), made
        return made


def decrypt_all(decrypter: RecordDecrypter, records: list[Record]) -> list[tuple[int, bytes] | None]:
    return [decrypter.decrypt(*r) for r in records]


def application_data(opened: list[tuple[int, bytes] | None]) -> bytes:
    return b"".join(o[1] for o in opened if o is not None and o[0] == APPLICATION_DATA)


def handshake_types(opened: list[tuple[int, bytes] | None]) -> list[int]:
    return [t for o in opened if o is not None and o[0] == HANDSHAKE for t, _ in handshake_messages(o[1])]


class _MemoryPipe:
    """A client and a server SSLObject joined by MemoryBIOs; every byte moved is recorded."""

    def __init__(self, client: ssl.SSLContext, server: ssl.SSLContext) -> None:
        self.client_in, self.client_out, self.server_in, self.server_out = (ssl.MemoryBIO() for _ in range(4))
        self.client = client.wrap_bio(self.client_in, self.client_out, server_hostname="localhost")
        self.server = server.wrap_bio(self.server_in, self.server_out, server_side=True)
        self.c2s, self.s2c = bytearray(), bytearray()
        self.flights: list[tuple[str, bytes]] = []  # ("c2s" or "s2c", bytes) in the order they moved

    def pump(self) -> None:
        while self.client_out.pending or self.server_out.pending:
            to_server, to_client = self.client_out.read(), self.server_out.read()
            self.c2s += to_server
            self.server_in.write(to_server)
            self.s2c += to_client
            self.client_in.write(to_client)
            self.flights += [(direction, data) for direction, data in [("c2s", to_server), ("s2c", to_client)] if data]

    def handshake(self) -> None:
        for _ in range(10):
            done = True
            for end in (self.client, self.server):
                try:
                    end.do_handshake()
                except ssl.SSLWantReadError:
                    done = False
            self.pump()
            if done:
                return
        raise AssertionError("the in-memory handshake did not finish")

    def send(self, sender: ssl.SSLObject, receiver: ssl.SSLObject, data: bytes) -> None:
        sender.write(data)
        self.pump()
        received = bytearray()
        while len(received) < len(data):
            received += receiver.read(1 << 20)
            self.pump()  # TLS 1.3: a read may answer (tickets are read, nothing is sent back here)
        assert received == data

    def close(self) -> None:
        for end in (self.client, self.server):
            with contextlib.suppress(ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                end.unwrap()
            self.pump()


def memory_session(tmp_path: Path, certs: Certs, *, ciphers: str | None = None, tls12: bool = False,
                   client_sends: list[bytes] = CLIENT_SENDS, server_sends: list[bytes] = SERVER_SENDS) -> Session:
    """A session between two SSLObjects; each item of client_sends / server_sends is one write."""
    keylog = tmp_path / f"keys-{time.monotonic_ns()}.log"
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname, client.verify_mode = False, ssl.CERT_NONE
    client.keylog_filename = str(keylog)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(*certs.rsa)
    server.load_cert_chain(*certs.ec)  # OpenSSL keeps one certificate per key type: ECDSA suites use this one
    server.load_dh_params(str(certs.dh_params))
    if tls12:
        client.maximum_version = ssl.TLSVersion.TLSv1_2
    if ciphers is not None:
        client.set_ciphers(ciphers)
        server.set_ciphers(ciphers)
    pipe = _MemoryPipe(client, server)
    pipe.handshake()
    for data in client_sends:
        pipe.send(pipe.client, pipe.server, data)
    for data in server_sends:
        pipe.send(pipe.server, pipe.client, data)
    pipe.close()
    return Session(bytes(pipe.c2s), bytes(pipe.s2c), b"".join(client_sends), b"".join(server_sends), keylog.read_bytes(),
                   pipe.flights)


# Every TLS 1.2 AEAD suite the table holds that OpenSSL negotiates (the static DH/ECDH and DSS suites
# it does not): OpenSSL's name, the IANA code.
TLS12_SUITES = [
    ("ECDHE-RSA-AES128-GCM-SHA256", 0xC02F),
    ("ECDHE-RSA-AES256-GCM-SHA384", 0xC030),
    ("ECDHE-ECDSA-AES128-GCM-SHA256", 0xC02B),
    ("ECDHE-ECDSA-AES256-GCM-SHA384", 0xC02C),
    ("AES128-GCM-SHA256", 0x009C),
    ("AES256-GCM-SHA384", 0x009D),
    ("DHE-RSA-AES128-GCM-SHA256", 0x009E),
    ("DHE-RSA-AES256-GCM-SHA384", 0x009F),
    ("ADH-AES128-GCM-SHA256:@SECLEVEL=0", 0x00A6),
    ("ADH-AES256-GCM-SHA384:@SECLEVEL=0", 0x00A7),
    ("ECDHE-RSA-CHACHA20-POLY1305", 0xCCA8),
    ("ECDHE-ECDSA-CHACHA20-POLY1305", 0xCCA9),
    ("DHE-RSA-CHACHA20-POLY1305", 0xCCAA),
    ("AES128-CCM", 0xC09C),
    ("AES256-CCM", 0xC09D),
    ("DHE-RSA-AES128-CCM", 0xC09E),
    ("DHE-RSA-AES256-CCM", 0xC09F),
    ("AES128-CCM8", 0xC0A0),
    ("AES256-CCM8", 0xC0A1),
    ("DHE-RSA-AES128-CCM8", 0xC0A2),
    ("DHE-RSA-AES256-CCM8", 0xC0A3),
    ("ECDHE-ECDSA-AES128-CCM", 0xC0AC),
    ("ECDHE-ECDSA-AES256-CCM", 0xC0AD),
    ("ECDHE-ECDSA-AES128-CCM8", 0xC0AE),
    ("ECDHE-ECDSA-AES256-CCM8", 0xC0AF),
]


def assert_session_decrypts(session: Session) -> tuple[list, list]:
    """Both directions open completely, give back what was sent, and end with a close_notify alert."""
    client, server = session.decrypters()
    c2s, s2c = decrypt_all(client, session.protected("c2s")), decrypt_all(server, session.protected("s2c"))
    assert None not in c2s and None not in s2c
    assert application_data(c2s) == session.client_sent
    assert application_data(s2c) == session.server_sent
    assert c2s[-1] == s2c[-1] == (ALERT, b"\x01\x00")
    assert (client.records_lost, server.records_lost) == (0, 0)
    return c2s, s2c


@pytest.mark.parametrize(("ciphers", "code"), TLS12_SUITES, ids=[name for name, _ in TLS12_SUITES])
def test_tls12_session(tmp_path, certs, ciphers, code):
    session = memory_session(tmp_path, certs, ciphers=ciphers, tls12=True)
    assert session.hellos[2:] == (code, TLS12)
    c2s, s2c = assert_session_decrypts(session)
    assert c2s[0][0] == s2c[0][0] == HANDSHAKE  # the encrypted Finished, sequence number 0
    assert handshake_messages(c2s[0][1]) == [(20, 12)]


def test_tls13_session_in_memory(tmp_path, certs):
    """Python's default TLS 1.3 suite, with the server's session tickets after its Finished."""
    session = memory_session(tmp_path, certs)
    assert session.hellos[3] == TLS13
    c2s, s2c = assert_session_decrypts(session)
    assert handshake_types(c2s) == [20]  # the client's Finished
    assert handshake_types(s2c)[:4] == [8, 11, 15, 20] and set(handshake_types(s2c)[4:]) == {4}


# ---- TLS 1.3 with openssl s_client / s_server: every suite, KeyUpdate ------------------------------------

TLS13_SUITES = [
    ("TLS_AES_128_GCM_SHA256", 0x1301),
    ("TLS_AES_256_GCM_SHA384", 0x1302),
    ("TLS_CHACHA20_POLY1305_SHA256", 0x1303),
    ("TLS_AES_128_CCM_SHA256", 0x1304),
    ("TLS_AES_128_CCM_8_SHA256", 0x1305),
]
OPENSSL_TIMEOUT = 10.0


class _Output(threading.Thread):
    """A process's stdout, collected as it comes."""

    def __init__(self, process: subprocess.Popen) -> None:
        super().__init__(daemon=True)
        self.process = process
        self.data = bytearray()
        self.changed = threading.Condition()

    def run(self) -> None:
        while chunk := os.read(self.process.stdout.fileno(), 65536):
            with self.changed:
                self.data += chunk
                self.changed.notify_all()

    def wait_for(self, expected: bytes) -> None:
        with self.changed:
            if not self.changed.wait_for(lambda: expected in self.data, OPENSSL_TIMEOUT):
                raise AssertionError(f"{self.process.args[:2]} never printed {expected!r}: {bytes(self.data[-500:])!r}")


class _Relay(threading.Thread):
    """A TCP relay on 127.0.0.1 that records each direction's bytes (the capture, without a capture)."""

    def __init__(self, server_port: int) -> None:
        super().__init__(daemon=True)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.server_port = server_port
        self.streams = {"c2s": bytearray(), "s2c": bytearray()}

    def run(self) -> None:
        self.listener.settimeout(OPENSSL_TIMEOUT)
        client, _ = self.listener.accept()
        server = socket.create_connection(("127.0.0.1", self.server_port))
        peers = {client: (server, "c2s"), server: (client, "s2c")}
        reading = set(peers)
        while reading:
            ready, _, _ = select.select(list(reading), [], [], OPENSSL_TIMEOUT)
            if not ready:
                break
            for sock in ready:
                other, direction = peers[sock]
                data = sock.recv(65536)
                if data:
                    self.streams[direction] += data
                    other.sendall(data)
                else:
                    reading.discard(sock)
                    other.shutdown(socket.SHUT_WR)
        client.close()
        server.close()
        self.listener.close()

    def wait_for_growth(self, direction: str, size: int) -> None:
        deadline = time.monotonic() + OPENSSL_TIMEOUT
        while len(self.streams[direction]) <= size:
            assert time.monotonic() < deadline, f"nothing more came {direction}"
            time.sleep(0.005)


def _write(process: subprocess.Popen, data: bytes) -> None:
    process.stdin.write(data)
    process.stdin.flush()


def openssl_session(tmp_path: Path, certs: Certs, suite: str) -> Session:
    """A TLS 1.3 session between openssl s_client and s_server: data both ways; the server's KeyUpdate
    with update_requested (s_server's "K" command), which the client answers with its own (RFC 8446
    4.6.3); data both ways; the same started by the client (s_client's "K"); data both ways. Each step
    waits for the previous one to arrive, so the order on the wire is fixed."""
    keylog = tmp_path / f"keys-{suite}.log"
    processes: list[subprocess.Popen] = []
    try:
        server = subprocess.Popen(["openssl", "s_server", "-accept", "127.0.0.1:0", "-naccept", "1", "-tls1_3",
                                   "-ciphersuites", suite, "-cert", str(certs.ec[0]), "-key", str(certs.ec[1])],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        processes.append(server)
        server_out = _Output(server)
        server_out.start()
        server_out.wait_for(b"ACCEPT 127.0.0.1:")
        port = int(bytes(server_out.data).split(b"ACCEPT 127.0.0.1:")[1].split(b"\n")[0])
        relay = _Relay(port)
        relay.start()
        # Not -quiet: it would imply -ign_eof, which turns off the one-letter commands.
        client = subprocess.Popen(["openssl", "s_client", "-connect", f"127.0.0.1:{relay.port}", "-tls1_3",
                                   "-ciphersuites", suite, "-keylogfile", str(keylog)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        processes.append(client)
        client_out = _Output(client)
        client_out.start()
        client_out.wait_for(b"Verify return code")
        # None of these starts with a letter s_client or s_server would take for a command.
        client_data = [AMQP_HEADER + CONNECTION_TUNE_OK, HEARTBEAT + b"after one key update", HEARTBEAT + b"after two"]
        server_data = [SERVER_SENDS[0] + HEARTBEAT, HEARTBEAT + b"after one key update", HEARTBEAT + b"after two"]
        _write(client, client_data[0])
        server_out.wait_for(client_data[0])
        _write(server, server_data[0])
        client_out.wait_for(server_data[0])
        before = len(relay.streams["s2c"])
        _write(server, b"K\n")
        relay.wait_for_growth("s2c", before)  # the KeyUpdate is on its way; the next line must not join it
        _write(server, server_data[1])
        client_out.wait_for(server_data[1])  # the client has read the KeyUpdate before this
        _write(client, client_data[1])
        server_out.wait_for(client_data[1])
        _write(client, b"K\n")
        client_out.wait_for(b"KEYUPDATE")  # scheduled, sent with the next write
        _write(client, client_data[2])
        server_out.wait_for(client_data[2])
        _write(server, server_data[2])  # with the server's answering KeyUpdate
        client_out.wait_for(server_data[2])
        _write(client, b"Q\n")
        for process in processes:
            process.wait(OPENSSL_TIMEOUT)
        relay.join(OPENSSL_TIMEOUT)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    return Session(bytes(relay.streams["c2s"]), bytes(relay.streams["s2c"]), b"".join(client_data),
                   b"".join(server_data), keylog.read_bytes())


needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="the openssl command is not installed")


@pytest.fixture(scope="module")
def openssl_sessions(tmp_path_factory, certs) -> dict[str, Session]:
    """One s_client/s_server session per TLS 1.3 suite, made once for the tests below."""
    directory = tmp_path_factory.mktemp("openssl-sessions")
    return {suite: openssl_session(directory, certs, suite) for suite, _ in TLS13_SUITES}


@needs_openssl
@pytest.mark.parametrize(("suite", "code"), TLS13_SUITES, ids=[name for name, _ in TLS13_SUITES])
def test_tls13_session_with_key_update(openssl_sessions, suite, code):
    session = openssl_sessions[suite]
    assert session.hellos[2:] == (code, TLS13)
    client, server = session.decrypters()
    c2s, s2c = decrypt_all(client, session.protected("c2s")), decrypt_all(server, session.protected("s2c"))
    assert None not in c2s and None not in s2c
    assert application_data(c2s) == session.client_sent
    assert application_data(s2c) == session.server_sent
    # Finished, the KeyUpdate answering the server's, its own; the server: its flight, tickets, two KeyUpdates
    assert handshake_types(c2s) == [20, 24, 24]
    assert handshake_types(s2c)[:4] == [8, 11, 15, 20] and handshake_types(s2c)[-2:] == [24, 24]
    assert (client.records_lost, server.records_lost) == (0, 0)
    # The key log also holds labels the decrypter does not use (EXPORTER_SECRET, OpenSSL's *_N): counted, not bad.
    assert KeyLog.parse(session.keylog).unsupported_lines >= 1


@needs_openssl
def test_tls13_lost_key_update_record(openssl_sessions):
    """The record with the server's KeyUpdate lost: the next generation's keys open what follows."""
    session = openssl_sessions["TLS_AES_128_GCM_SHA256"]
    records = session.protected("s2c")
    opened = decrypt_all(session.decrypters()[1], records)
    key_update = next(i for i, o in enumerate(opened) if o[0] == HANDSHAKE and o[1][0] == 24)
    _, server = session.decrypters()
    kept = decrypt_all(server, records[:key_update] + records[key_update + 1:])
    assert kept == opened[:key_update] + opened[key_update + 1:]
    assert application_data(kept) == session.server_sent


# ---- losses, wrong keys, damage ---------------------------------------------------------------------------

MANY_WRITES = [AMQP_HEADER] + [HEARTBEAT + i.to_bytes(2, "big") for i in range(100)]


@pytest.fixture(scope="module")
def many_records(tmp_path_factory, certs) -> dict[str, Session]:
    """Sessions whose client sends 101 records: TLS 1.2 with an explicit nonce (AES-GCM) and without
    (ChaCha20-Poly1305), and TLS 1.3."""
    directory = tmp_path_factory.mktemp("many-records")
    return {name: memory_session(directory, certs, ciphers=ciphers, tls12=ciphers is not None,
                                 client_sends=MANY_WRITES, server_sends=[HEARTBEAT])
            for name, ciphers in [("TLS 1.2 AES-GCM", "ECDHE-RSA-AES128-GCM-SHA256"),
                                  ("TLS 1.2 ChaCha20", "ECDHE-RSA-CHACHA20-POLY1305"), ("TLS 1.3", None)]}


@pytest.mark.parametrize("name", ["TLS 1.2 AES-GCM", "TLS 1.2 ChaCha20", "TLS 1.3"])
@pytest.mark.parametrize("lost", [1, 5, SEARCH_WINDOW])
def test_lost_records_within_the_window(many_records, name, lost):
    session = many_records[name]
    records = session.protected("c2s")
    first = 10  # the records of writes 8, 9, ... (after the Finished and the header)
    client, _ = session.decrypters()
    opened = decrypt_all(client, records[:first] + records[first + lost:])
    assert None not in opened
    assert client.records_lost == lost
    assert application_data(opened) == b"".join(MANY_WRITES[:first - 1] + MANY_WRITES[first - 1 + lost:])


@pytest.mark.parametrize(("name", "recovers"), [("TLS 1.2 AES-GCM", True), ("TLS 1.2 ChaCha20", False), ("TLS 1.3", False)])
def test_lost_records_beyond_the_window(many_records, name, recovers):
    """A gap wider than the window is found again only where the sender's explicit nonce is its
    sequence number (OpenSSL's TLS 1.2 AES-GCM); otherwise the rest stays closed, and costs little."""
    session = many_records[name]
    records = session.protected("c2s")
    lost = SEARCH_WINDOW + 1
    client, _ = session.decrypters()
    opened = decrypt_all(client, records[:10] + records[10 + lost:])
    assert None not in opened[:10]
    if recovers:
        assert None not in opened and client.records_lost == lost
    else:
        assert set(opened[10:]) == {None} and client.records_lost == 0


def _corrupted(secrets: dict[str, bytes]) -> dict[str, bytes]:
    return {label: bytes([secret[0] ^ 1]) + secret[1:] for label, secret in secrets.items()}


@pytest.mark.parametrize("name", ["TLS 1.2 AES-GCM", "TLS 1.2 ChaCha20", "TLS 1.3"])
def test_wrong_key_log(many_records, name):
    session = many_records[name]
    client, server = session.decrypters(_corrupted(session.secrets()))
    assert set(decrypt_all(client, session.protected("c2s"))) == {None}
    assert set(decrypt_all(server, session.protected("s2c"))) == {None}
    assert (client.records_lost, server.records_lost) == (0, 0)


def test_keys_of_another_session(tmp_path, certs):
    one = memory_session(tmp_path, certs, ciphers="ECDHE-RSA-AES128-GCM-SHA256", tls12=True)
    other = memory_session(tmp_path, certs, ciphers="ECDHE-RSA-AES128-GCM-SHA256", tls12=True)
    client, _ = one.decrypters(other.secrets())
    assert set(decrypt_all(client, one.protected("c2s"))) == {None}


@pytest.mark.parametrize("name", ["TLS 1.2 AES-GCM", "TLS 1.2 ChaCha20", "TLS 1.3"])
def test_truncated_and_flipped_records_are_refused_and_change_nothing(many_records, name):
    session = many_records[name]
    records = session.protected("c2s")[:3]
    client, _ = session.decrypters()
    for content_type, version, fragment in records:
        for size in range(len(fragment)):
            assert client.decrypt(content_type, version, fragment[:size]) is None
        for i in range(0, len(fragment), 7):
            flipped = fragment[:i] + bytes([fragment[i] ^ 0x80]) + fragment[i + 1:]
            assert client.decrypt(content_type, version, flipped) is None
        assert client.decrypt(content_type ^ 1, version, fragment) is None  # the header is authenticated
        assert client.decrypt(content_type, version, fragment) is not None
    assert client.records_lost == 0


def test_give_up_searching_after_many_failures():
    """After GIVE_UP_SEARCH_AFTER records in a row open nowhere only the expected sequence numbers are
    tried: the record at one still opens (and the search comes back), a gap is no longer bridged."""
    client, server = rfc8448_decrypters()
    for decrypter in (client, server):
        for _ in range(GIVE_UP_SEARCH_AFTER + 5):
            assert decrypter.decrypt(APPLICATION_DATA, TLS12, bytes(40)) is None
    assert client.decrypt(*record(RFC8448_CLIENT_FINISHED_RECORD)) == (HANDSHAKE, RFC8448_CLIENT_FINISHED)
    assert server.decrypt(*record(RFC8448_SERVER_DATA_RECORD)) is None  # application seq 1, the ticket lost
    _, server = rfc8448_decrypters()
    assert server.decrypt(*record(RFC8448_SERVER_DATA_RECORD)) == (APPLICATION_DATA, RFC8448_DATA)


RFC8448_SERVER_RECORDS = [record(r) for r in (RFC8448_SERVER_HANDSHAKE_RECORD, RFC8448_SERVER_TICKET_RECORD,
                                              RFC8448_SERVER_DATA_RECORD, RFC8448_SERVER_ALERT_RECORD)]
garbage_records = st.tuples(st.sampled_from([20, 21, 22, 23, 0, 255]), st.sampled_from([0x0303, 0x0301, 0]),
                            st.binary(max_size=80))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 4), garbage_records), max_size=12))
def test_garbage_between_records_changes_nothing(insertions):
    _, server = rfc8448_decrypters()
    expected = [server.decrypt(*r) for r in RFC8448_SERVER_RECORDS]
    _, server = rfc8448_decrypters()
    for i, real in enumerate([*RFC8448_SERVER_RECORDS, None]):
        for garbage in [g for position, g in insertions if position == i]:
            assert server.decrypt(*garbage) is None
        if real is not None:
            assert server.decrypt(*real) == expected[i]
    assert server.records_lost == 0


def _synthetic_decrypters(code: int) -> tuple[RecordDecrypter, RecordDecrypter]:
    version = TLS13 if code >> 8 == 0x13 else TLS12
    secrets = ({"CLIENT_RANDOM": bytes(48)} if version == TLS12 else
               {label: bytes(SUITES[code].hash_size) for label in RFC8448_SECRETS})
    made = session_decrypters(version=version, cipher_suite=code, client_random=bytes(32), server_random=bytes(32),
                              secrets=secrets)
    assert not isinstance(made, str)
    return made


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(sorted(SUITES)), st.integers(-(2**70), 2**70) | st.integers(0, 255),
       st.integers(-(2**70), 2**70) | st.sampled_from([0x0303, 0x0301]), st.binary(max_size=64))
def test_decrypt_never_raises(code, content_type, version, fragment):
    client, _ = _synthetic_decrypters(code)
    assert client.decrypt(content_type, version, fragment) is None
    assert client.decrypt(content_type, version, memoryview(fragment)) is None
    assert client.decrypt(content_type, version, None) is None


# ---- session_decrypters: reasons ------------------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "reason"), [
    ({"cipher_suite": 0x002F}, "cipher suite 0x002f (TLS_RSA_WITH_AES_128_CBC_SHA) is not supported; AEAD suites only"),
    ({"cipher_suite": 0xC028}, "cipher suite 0xc028 (TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA384) is not supported"),
    ({"cipher_suite": 0xABCD}, "cipher suite 0xabcd is not supported"),
    ({"version": 0x0302}, "TLS version 0x0302 is not supported; TLS 1.2 and 1.3 only"),
    ({"version": TLS13}, "cannot be negotiated in TLS 1.3"),
    ({"secrets": {}}, "the key log has no CLIENT_RANDOM line (TLS 1.2 master secret) for this session"),
    ({"secrets": {"CLIENT_RANDOM": bytes(47)}}, "is 47 bytes, not 48"),
    ({"client_random": bytes(31)}, "randoms are not 32 bytes"),
    ({"version": TLS13, "cipher_suite": 0x1301, "secrets": {"CLIENT_RANDOM": bytes(48)}},
     "the key log has no TLS 1.3 traffic secrets for this session"),
    ({"version": TLS13, "cipher_suite": 0x1301,
      "secrets": {k: v for k, v in RFC8448_SECRETS.items() if "HANDSHAKE" in k}},
     "no CLIENT_TRAFFIC_SECRET_0 or SERVER_TRAFFIC_SECRET_0"),
    ({"version": TLS13, "cipher_suite": 0x1302, "secrets": RFC8448_SECRETS}, "needs 48"),
])
def test_reasons(kwargs, reason):
    arguments = {"version": TLS12, "cipher_suite": 0xC02F, "client_random": bytes(32), "server_random": bytes(32),
                 "secrets": {"CLIENT_RANDOM": bytes(range(48))}, **kwargs}
    made = session_decrypters(**arguments)
    assert isinstance(made, str) and reason in made
    assert "\n" not in made


def test_cipher_suite_names():
    assert cipher_suite_code_name(0x1303) == "0x1303 (TLS_CHACHA20_POLY1305_SHA256)"
    assert cipher_suite_code_name(0x0035) == "0x0035 (TLS_RSA_WITH_AES_256_CBC_SHA)"
    assert cipher_suite_code_name(0x1234) == "0x1234"
    assert {s.cipher for s in SUITES.values()} == {"AES-GCM", "AES-CCM", "ChaCha20-Poly1305"}
    assert SUITES[0xC0AE].tag_size == 8 and SUITES[0x1305].tag_size == 8 and SUITES[0xC09D].hash_name == "sha256"
    assert SUITES[0xC030].hash_name == SUITES[0x1302].hash_name == "sha384"


# ---- the key log ----------------------------------------------------------------------------------------------

CR1, CR2 = bytes(range(32)), bytes(range(32, 64))
MASTER = bytes(range(100, 148))
KEYLOG_TEXT = (
    b"# SSL/TLS secrets log file, generated by OpenSSL\r\n"
    b"CLIENT_RANDOM " + CR1.hex().encode() + b" " + MASTER.hex().upper().encode() + b"  \r\n"
    b"\r\n"
    b"   # an indented comment\n"
    b"CLIENT_HANDSHAKE_TRAFFIC_SECRET " + CR2.hex().upper().encode() + b"\t" + bytes(32).hex().encode() + b"\n"
    b"SERVER_TRAFFIC_SECRET_0 " + CR2.hex().encode() + b" " + bytes(range(48)).hex().encode() + b"\n"
    b"EXPORTER_SECRET " + CR2.hex().encode() + b" " + bytes(32).hex().encode() + b"\n"
    b"CLIENT_EARLY_TRAFFIC_SECRET " + CR2.hex().encode() + b" " + bytes(32).hex().encode() + b"\n"
    b"RSA 0123456789abcdef " + bytes(48).hex().encode() + b"\n"
    b"CLIENT_RANDOM " + CR1.hex().encode() + b"\n"  # two fields
    b"CLIENT_RANDOM " + CR1.hex().encode()[:-1] + b" " + MASTER.hex().encode() + b"\n"  # odd hex
    b"CLIENT_RANDOM " + CR1[:31].hex().encode() + b" " + MASTER.hex().encode() + b"\n"  # 31-byte random
    b"CLIENT_RANDOM " + CR1.hex().encode() + b" " + MASTER[:47].hex().encode() + b"\n"  # 47-byte master secret
    b"client_random " + CR1.hex().encode() + b" " + MASTER.hex().encode() + b"\n"  # lower-case label
    b"CLIENT_RANDOM 0x" + CR1.hex().encode() + b" " + MASTER.hex().encode() + b"\n"
    b"\xff\xfe garbage \x00\n"
    b"SERVER_HANDSHAKE_TRAFFIC_SECRET " + CR2.hex().encode() + b" " + bytes(32).hex().encode() + b"\x00\x00\x00"  # DSB padding
)


def test_keylog_parse():
    keylog = KeyLog.parse(KEYLOG_TEXT)
    assert len(keylog) == 2
    assert keylog.secrets_for(CR1) == {"CLIENT_RANDOM": MASTER}
    assert keylog.secrets_for(CR2) == {"CLIENT_HANDSHAKE_TRAFFIC_SECRET": bytes(32), "SERVER_TRAFFIC_SECRET_0": bytes(range(48)),
                                       "SERVER_HANDSHAKE_TRAFFIC_SECRET": bytes(32)}
    assert keylog.secrets_for(bytes(32)) is None
    assert (keylog.bad_lines, keylog.unsupported_lines) == (7, 3)


def test_keylog_merge_and_copies():
    keylog = KeyLog.parse(KEYLOG_TEXT)
    other = KeyLog.parse(b"CLIENT_RANDOM " + CR1.hex().encode() + b" " + bytes(48).hex().encode() + b"\nbad\n"
                         b"CLIENT_TRAFFIC_SECRET_0 " + CR2.hex().encode() + b" " + bytes(48).hex().encode())
    keylog.merge(other)
    assert len(keylog) == 2
    assert keylog.secrets_for(CR1) == {"CLIENT_RANDOM": bytes(48)}  # the merged-in line wins
    assert set(keylog.secrets_for(CR2)) == {"CLIENT_HANDSHAKE_TRAFFIC_SECRET", "SERVER_HANDSHAKE_TRAFFIC_SECRET",
                                            "SERVER_TRAFFIC_SECRET_0", "CLIENT_TRAFFIC_SECRET_0"}
    assert (keylog.bad_lines, keylog.unsupported_lines) == (8, 3)
    keylog.secrets_for(CR1)["CLIENT_RANDOM"] = b"changed"
    assert keylog.secrets_for(CR1) == {"CLIENT_RANDOM": bytes(48)}
    assert len(KeyLog.parse(b"")) == 0 and not KeyLog()
    assert KeyLog.parse(KEYLOG_TEXT.decode("latin-1")).by_client_random == KeyLog.parse(KEYLOG_TEXT).by_client_random


def test_no_key_material_in_reprs():
    keylog = KeyLog.parse(KEYLOG_TEXT)
    client, server = rfc8448_decrypters()
    shown = " ".join([repr(keylog), str(keylog), f"{keylog}", repr(client), str(server)])
    assert repr(keylog) == "KeyLog(sessions=2, bad_lines=7, unsupported_lines=3)"
    for secret in [MASTER, bytes(range(48)), *RFC8448_SECRETS.values()]:
        for form in (secret.hex(), secret.hex().upper(), repr(secret)[2:-1], secret[:8].hex()):
            assert form not in shown


hex_field = st.binary(min_size=0, max_size=50).map(bytes.hex) | st.text("0123456789abcdefABCDEFxg ", max_size=100)
keylog_line = st.tuples(
    st.sampled_from(["CLIENT_RANDOM", "CLIENT_HANDSHAKE_TRAFFIC_SECRET", "SERVER_TRAFFIC_SECRET_0", "RSA",
                     "EXPORTER_SECRET", "#", "", "lower", "CLIENT_RANDOM_"]),
    hex_field, hex_field, st.sampled_from([" ", "  ", "\t", ""]), st.sampled_from(["\n", "\r\n", "\r", "", " \n", "\x00"]),
).map(lambda parts: f"{parts[0]}{parts[3]}{parts[1]} {parts[2]}{parts[4]}".encode("latin-1"))


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=400) | st.lists(keylog_line, max_size=20).map(b"".join))
def test_keylog_parse_never_raises(text):
    keylog = KeyLog.parse(text)
    assert keylog.bad_lines + keylog.unsupported_lines + len(keylog) <= len(text.splitlines())
    for client_random, secrets in keylog.by_client_random.items():
        assert len(client_random) == 32 and secrets
    assert "KeyLog(sessions=" in repr(keylog)


def test_no_cryptography_for_plaintext_analysis():
    """Importing the TLS modules loads no `cryptography`: only building a session's keys does."""
    code = ("import sys, analyzer.tls.keylog, analyzer.tls.decrypt; "
            "assert not [m for m in sys.modules if m.split('.')[0] == 'cryptography'], 'cryptography was imported'")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)


# ---- Wireshark agrees ------------------------------------------------------------------------------------------


def _tshark_follow(pcap: Path, keylog: Path) -> dict[str, bytes]:
    """The decrypted stream of each direction, as tshark's "Follow TLS Stream" gives it."""
    result = subprocess.run(["tshark", "-r", str(pcap), "-o", f"tls.keylog_file:{keylog}", "-d", "tcp.port==5671,tls",
                             "-q", "-z", "follow,tls,raw,0"], capture_output=True, text=True, timeout=60, check=True)
    streams = {"c2s": bytearray(), "s2c": bytearray()}
    lines = result.stdout.splitlines()
    # Node 0 is whichever side tshark met first in the decrypted stream (the server, in TLS 1.3); node 1 is indented.
    node0 = next(i for i, line in enumerate(lines) if line.startswith("Node 0:"))
    unindented = "s2c" if lines[node0].endswith(":5671") else "c2s"
    indented = "c2s" if unindented == "s2c" else "s2c"
    for line in lines[node0 + 2:]:
        if line.startswith("="):
            break
        streams[indented if line.startswith("\t") else unindented] += bytes.fromhex(line.strip())
    return {direction: bytes(data) for direction, data in streams.items()}


@pytest.mark.tshark
@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")
@pytest.mark.parametrize("ciphers", ["ECDHE-RSA-CHACHA20-POLY1305", None], ids=["TLS 1.2", "TLS 1.3"])
def test_tshark_decrypts_the_same(tmp_path, certs, ciphers):
    """The session written as a pcap (one TCP segment per flight, port 5671) and the client's key log:
    Wireshark's TLS dissector finds the same application data in both directions."""
    from analyzer.records import ACK, C2S, PSH, S2C, SYN
    from tests.synth import LINKTYPE_RAW, pcap_bytes, scripted_conversation

    session = memory_session(tmp_path, certs, ciphers=ciphers, tls12=ciphers is not None)
    steps = [(0.0, C2S, SYN, b""), (0.001, S2C, SYN | ACK, b""), (0.002, C2S, ACK, b"")]
    for i, (direction, data) in enumerate(session.flights):
        for start in range(0, len(data), 16_000):  # IPv4 packets stay under 64 KiB
            steps.append((0.01 + i * 0.001, C2S if direction == "c2s" else S2C, PSH | ACK, data[start:start + 16_000]))
    conversation = scripted_conversation(steps, client=("127.0.0.1", 40000), server=("127.0.0.1", 5671))
    pcap, keylog = tmp_path / "session.pcap", tmp_path / "keys.log"
    pcap.write_bytes(pcap_bytes(conversation.packets(LINKTYPE_RAW)))
    keylog.write_bytes(session.keylog)
    client, server = session.decrypters()
    ours = {"c2s": application_data(decrypt_all(client, session.protected("c2s"))),
            "s2c": application_data(decrypt_all(server, session.protected("s2c")))}
    assert ours == {"c2s": session.client_sent, "s2c": session.server_sent}
    assert _tshark_follow(pcap, keylog) == ours
