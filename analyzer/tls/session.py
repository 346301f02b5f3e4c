"""One TLS connection: its records both ways, its handshake facts, and with keys its plaintext.

Fed one direction's reassembled bytes at a time (Flow._decode), it appends TlsRecord/TlsError
events and, for each record it could decrypt, feeds the plaintext to that direction's AMQP
FrameDecoder, whose events follow in the same list: decrypted AMQP is analysed exactly as plaintext
AMQP. Without keys each protected record's AMQP content is guessed from its size (inference.py).
What a side's records are follows RFC 5246 7.1 / RFC 8446 5: in TLS 1.2 a side protects its records
after its ChangeCipherSpec; in TLS 1.3 every application_data record is protected and the handshake
records after the hellos travel inside them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from analyzer.amqp.framing import FrameDecoder
from analyzer.records import C2S, ConnectionInfo, Event, TlsError, TlsInfo, TlsRecord
from analyzer.tls.handshake import (
    CLIENT_HELLO,
    HANDSHAKE_TYPE_NAMES,
    SERVER_HELLO,
    HandshakeReader,
    parse_client_hello,
    parse_server_hello,
)
from analyzer.tls.inference import ALERT as GUESS_ALERT
from analyzer.tls.inference import AmqpGuesser
from analyzer.tls.records import (
    ALERT,
    APPLICATION_DATA,
    CHANGE_CIPHER_SPEC,
    CONTENT_TYPE_NAMES,
    HANDSHAKE,
    Record,
    RecordDecoder,
    RecordError,
    RecordEvent,
)
from analyzer.tls.suites import TLS13, record_overhead

if TYPE_CHECKING:  # only the type: decrypt.py imports `cryptography`, paid for only when keys are given
    from analyzer.tls.decrypt import RecordDecrypter
    from analyzer.tls.keylog import KeyLog

ALERT_NAMES = {
    0: "close_notify", 10: "unexpected_message", 20: "bad_record_mac", 22: "record_overflow",
    40: "handshake_failure", 42: "bad_certificate", 43: "unsupported_certificate", 44: "certificate_revoked",
    45: "certificate_expired", 46: "certificate_unknown", 47: "illegal_parameter", 48: "unknown_ca",
    49: "access_denied", 50: "decode_error", 51: "decrypt_error", 70: "protocol_version",
    71: "insufficient_security", 80: "internal_error", 86: "inappropriate_fallback", 90: "user_canceled",
    109: "missing_extension", 110: "unsupported_extension", 112: "unrecognized_name",
    116: "certificate_required", 120: "no_application_protocol",
}
# Decryption outcomes (TlsInfo.decryption) other than a reason from decrypt.session_decrypters.
NOT_ATTEMPTED = "not attempted"
DECRYPTED = "decrypted"
NO_KEYS = "the key log has no secrets for this session"
NO_HANDSHAKE = "the capture does not hold this session's handshake (its randoms): it cannot be decrypted"


def alert_name(fragment: bytes) -> str:
    if len(fragment) < 2:
        return "alert"
    level = {1: "warning", 2: "fatal"}.get(fragment[0], f"level {fragment[0]}")
    return f"alert {ALERT_NAMES.get(fragment[1], str(fragment[1]))} ({level})"


def _handshake_names(messages: list[tuple[int, bytes]]) -> str:
    return ", ".join(HANDSHAKE_TYPE_NAMES.get(t, f"handshake type {t}") for t, _ in messages)


@dataclass(slots=True)
class _Side:
    records: RecordDecoder
    handshake: HandshakeReader = field(default_factory=HandshakeReader)
    protected: bool = False  # TLS 1.2: after this side's ChangeCipherSpec
    decrypter: RecordDecrypter | None = None


class TlsSession:
    """Both directions of one TLS connection, by side index (0: the first packet's sender)."""

    __slots__ = ("client_side", "guesser", "info", "keys", "server_random", "sides", "tls")

    def __init__(self, info: ConnectionInfo, *, synced: bool, keys: KeyLog | None = None) -> None:
        self.info = info
        self.tls = info.tls = TlsInfo()
        self.keys = keys  # may still be empty: pcapng Decryption Secrets Blocks can add to it later
        keep = bool(keys)
        self.sides = (_Side(RecordDecoder(synced=synced, keep_application_data=keep)),
                      _Side(RecordDecoder(synced=synced, keep_application_data=keep)))
        self.client_side: int | None = None  # the side that sent the ClientHello
        self.server_random = b""
        self.guesser = AmqpGuesser(midstream=not synced)
        if keys and not synced:
            self.tls.decryption = NO_HANDSHAKE

    # ---- input ----------------------------------------------------------------------------------

    def feed(self, side: int, decoder: FrameDecoder, data: bytes, timestamp: float, packet: int,
             out: list[Event]) -> None:
        self._records(side, decoder, self.sides[side].records.feed(data, timestamp, packet), out)

    def gap(self, side: int, decoder: FrameDecoder, missing: int, timestamp: float, packet: int,
            out: list[Event]) -> None:
        state = self.sides[side]
        state.handshake.reset()
        if state.decrypter is not None:
            out.extend(decoder.gap(0, timestamp, packet))  # plaintext was lost too, how much is unknown
        # A record the hole cut (its header captured, its fragment not) still comes out, fragment-less.
        self._records(side, decoder, state.records.gap(missing, timestamp, packet), out)

    def _records(self, side: int, decoder: FrameDecoder, items: list[RecordEvent], out: list[Event]) -> None:
        for item in items:
            if type(item) is Record:
                self._record(side, decoder, item, out)
            else:
                assert isinstance(item, RecordError)
                out.append(TlsError(self.info, decoder.direction, item.timestamp, item.packet, item.offset,
                                    item.reason, item.skipped))

    # ---- one record -----------------------------------------------------------------------------

    def _record(self, side: int, decoder: FrameDecoder, record: Record, out: list[Event]) -> None:
        state = self.sides[side]
        kind = record.content_type
        fragment = record.fragment
        if kind == CHANGE_CIPHER_SPEC:
            if self.tls.version != TLS13:  # TLS 1.3 sends it only for middlebox compatibility (RFC 8446 D.4)
                state.protected = True
            self._emit(decoder, record, record.length, "change_cipher_spec", out)
            return
        if kind == HANDSHAKE and not state.protected and fragment is not None:
            messages = state.handshake.feed(fragment)
            for msg_type, body in messages:
                self._hello(side, msg_type, body)
            self._emit(decoder, record, record.length, _handshake_names(messages) or "handshake (continued)", out)
            return
        if kind == ALERT and not state.protected and fragment is not None:
            self._emit(decoder, record, record.length, alert_name(fragment), out)
            return
        if kind in (HANDSHAKE, ALERT) and not state.protected:
            state.handshake.reset()
            self._emit(decoder, record, record.length, f"{CONTENT_TYPE_NAMES[kind]} (cut by the capture)", out)
            return
        if kind not in (APPLICATION_DATA, HANDSHAKE, ALERT):
            self._emit(decoder, record, record.length, CONTENT_TYPE_NAMES.get(kind, f"type {kind}"), out)
            return
        decrypter = self._decrypter(side)
        if decrypter is not None and fragment is not None:
            self._decrypt(side, decrypter, decoder, record, fragment, out)
            return
        overhead = record_overhead(self.tls.version, self.tls.cipher_suite)
        plaintext_len = record.length - overhead if overhead is not None and record.length >= overhead else None
        guess = self.guesser.guess(self._from_client(side, decoder), plaintext_len, record.length) \
            if kind == APPLICATION_DATA else (GUESS_ALERT if kind == ALERT else None)
        what = {APPLICATION_DATA: "application data", HANDSHAKE: "encrypted handshake", ALERT: "encrypted alert"}[kind]
        self._emit(decoder, record, plaintext_len, what, out, guess)

    def _decrypt(self, side: int, decrypter: RecordDecrypter, decoder: FrameDecoder, record: Record,
                 fragment: bytes, out: list[Event]) -> None:
        lost = decrypter.records_lost
        opened = decrypter.decrypt(record.content_type, record.version, fragment)
        self.tls.records_lost += decrypter.records_lost - lost
        if opened is None:
            self.tls.records_undecryptable += 1
            out.append(TlsError(self.info, decoder.direction, record.timestamp, record.packet, record.offset,
                                f"no key authenticates this {record.length}-byte record"))
            self._emit(decoder, record, None, "undecryptable record", out)
            return
        inner, plaintext = opened
        if inner == APPLICATION_DATA:
            self._emit(decoder, record, len(plaintext), "application data", out, decrypted=True)
            out.extend(decoder.feed(plaintext, record.timestamp, record.packet))
        elif inner == HANDSHAKE:
            names = _handshake_names(self.sides[side].handshake.feed(plaintext))
            self._emit(decoder, record, len(plaintext), names or "handshake (continued)", out, decrypted=True)
        elif inner == ALERT:
            self._emit(decoder, record, len(plaintext), alert_name(plaintext), out, decrypted=True)
        else:
            self._emit(decoder, record, len(plaintext), CONTENT_TYPE_NAMES.get(inner, f"type {inner}"), out,
                       decrypted=True)

    def _emit(self, decoder: FrameDecoder, record: Record, plaintext_len: int | None, what: str, out: list[Event],
              guess: str | None = None, decrypted: bool = False) -> None:
        out.append(TlsRecord(self.info, decoder.direction, record.timestamp, record.packet, record.offset,
                             record.content_type, record.version, record.length, plaintext_len, what, guess,
                             decrypted))

    def _from_client(self, side: int, decoder: FrameDecoder) -> bool:
        if self.client_side is not None:
            return side == self.client_side
        return decoder.direction == C2S

    # ---- handshake ------------------------------------------------------------------------------

    def _hello(self, side: int, msg_type: int, body: bytes) -> None:
        tls = self.tls
        if msg_type == CLIENT_HELLO:
            hello = parse_client_hello(body)
            if hello is None:
                return
            self.client_side = side
            tls.client_hello = True
            tls.client_random = hello.random
            tls.sni = hello.sni
            tls.alpn_offered = hello.alpn
        elif msg_type == SERVER_HELLO:
            server = parse_server_hello(body)
            if server is None or server.retry:
                return  # a HelloRetryRequest: the real ServerHello follows the second ClientHello
            tls.server_hello = True
            tls.version = server.version
            tls.cipher_suite = server.cipher_suite
            tls.alpn = server.alpn
            self.server_random = server.random
            if tls.version == TLS13:
                for state in self.sides:
                    state.protected = True

    def _decrypter(self, side: int) -> RecordDecrypter | None:
        state = self.sides[side]
        if state.decrypter is not None or not self.keys:
            return state.decrypter
        tls = self.tls
        if tls.decryption != NOT_ATTEMPTED:
            return None  # tried once, and why not is recorded
        if not (tls.client_hello and tls.server_hello) or tls.client_random is None or self.client_side is None:
            tls.decryption = NO_HANDSHAKE
            return None
        secrets = self.keys.secrets_for(tls.client_random)
        if secrets is None:
            tls.decryption = NO_KEYS
            return None
        from analyzer.tls.decrypt import session_decrypters  # here: cryptography is loaded only with keys

        assert tls.version is not None and tls.cipher_suite is not None  # set with server_hello
        made = session_decrypters(version=tls.version, cipher_suite=tls.cipher_suite, client_random=tls.client_random,
                                  server_random=self.server_random, secrets=secrets)
        if isinstance(made, str):
            tls.decryption = made
            return None
        tls.decryption = DECRYPTED
        client, server = made
        self.sides[self.client_side].decrypter = client
        self.sides[1 - self.client_side].decrypter = server
        return self.sides[side].decrypter
