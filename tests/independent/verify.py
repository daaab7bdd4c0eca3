#!/usr/bin/env python3
"""Independent verifier of hwledger export / bundle files, written from docs/FORMAT.md alone.

Python 3 standard library only (Ed25519 is implemented here from RFC 8032). It reads an export file
(FORMAT.md §6), checks its framing, decodes every event body (§1), checks the hash chain (§2), rebuilds
the RFC 6962 Merkle tree (§3) and, given a pinned verifier key, opens the bundle's signed checkpoint and
compares its root (§5), following the verification algorithm of FORMAT.md §7.

Usage:
    verify.py FILE [--vkey VKEY|VKEYFILE] [--head SEQ:HASH] [--since CHECKPOINT_FILE] [--dump JSONL]

Output on standard output:
    OK <events> <merkle-root-hex>                 exit 0
    BROKEN seq=<n> kind=<kind>      (one per break, sorted by seq then kind; details on stderr)   exit 1
Exit 2 on a usage or I/O error (unreadable file, invalid --vkey / --head, --since without --vkey).

A run of more than MAX_MISSING_LINES consecutive missing seqs is printed as one line
`BROKEN seq=<first> kind=event_missing through=<last>` so that a forged seq cannot make the output (or the
memory use) unbounded.
"""

import argparse
import base64
import binascii
import bisect
import hashlib
import json
import os
import struct
import sys

MIB = 1 << 20
MAX_MISSING_LINES = 1000

# --------------------------------------------------------------------------------------------------
# §1 Event bodies: bincode 2 "standard" decoding, driven by a schema table.
# --------------------------------------------------------------------------------------------------


class Undecodable(Exception):
    """The body is not a valid event body (FORMAT.md §1)."""


class Cursor:
    """Reads a body from left to right; every read past the end raises Undecodable."""

    def __init__(self, data):
        self.data = data
        self.pos = 0

    def take(self, n):
        if n > len(self.data) - self.pos:
            raise Undecodable(f"body ends at byte {len(self.data)}, {n} more needed at {self.pos}")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def byte(self):
        return self.take(1)[0]


def read_varint(cur, bits):
    """Unsigned varint (§1.1) for a field of `bits` bits (32 or 64)."""
    first = cur.byte()
    if first <= 250:
        return first
    if first == 251:
        return struct.unpack("<H", cur.take(2))[0]
    if first == 252:
        return struct.unpack("<I", cur.take(4))[0]
    if first == 253 and bits >= 64:
        return struct.unpack("<Q", cur.take(8))[0]
    raise Undecodable(f"invalid varint marker 0x{first:02x} for a {bits}-bit integer at byte {cur.pos - 1}")


def unzigzag(n):
    return n >> 1 if n & 1 == 0 else -((n + 1) >> 1)


def decode_str(cur):
    length = read_varint(cur, 64)
    raw = cur.take(length)
    try:
        return raw.decode("utf-8", errors="strict")
    except UnicodeDecodeError as e:
        raise Undecodable(f"string is not UTF-8: {e}") from None


def decode_f32(cur):
    value = struct.unpack("<f", cur.take(4))[0]
    # JSON has no NaN or infinity; the dump writes them as null.
    return value if value == value and value not in (float("inf"), float("-inf")) else None


def decode_bool(cur):
    b = cur.byte()
    if b > 1:
        raise Undecodable(f"invalid bool 0x{b:02x}")
    return b == 1


PRIMITIVES = {
    "u32": lambda c: read_varint(c, 32),
    "u64": lambda c: read_varint(c, 64),
    "i32": lambda c: unzigzag(read_varint(c, 32)),
    "i64": lambda c: unzigzag(read_varint(c, 64)),
    "f32": decode_f32,
    "bool": decode_bool,
    "str": decode_str,
    "hash32": lambda c: c.take(32).hex(),
}


def decode(cur, ty):
    """Decodes a value of schema type `ty` (a primitive name or a tuple, see the tables below)."""
    if isinstance(ty, str):
        return PRIMITIVES[ty](cur)
    kind = ty[0]
    if kind == "opt":
        tag = cur.byte()
        if tag == 0:
            return None
        if tag == 1:
            return decode(cur, ty[1])
        raise Undecodable(f"invalid Option tag 0x{tag:02x}")
    if kind == "vec":
        n = read_varint(cur, 64)
        # Each element takes at least one byte, so a forged count fails before allocating much.
        if n > len(cur.data) - cur.pos:
            raise Undecodable(f"sequence of {n} elements is longer than the body")
        return [decode(cur, ty[1]) for _ in range(n)]
    if kind == "map":
        n = read_varint(cur, 64)
        if n > len(cur.data) - cur.pos:
            raise Undecodable(f"map of {n} entries is longer than the body")
        out = {}
        for _ in range(n):
            k = decode(cur, ty[1])
            out[k] = decode(cur, ty[2])
        return out
    if kind == "struct":
        return {name: decode(cur, fty) for name, fty in ty[1]}
    if kind == "enum":
        index = read_varint(cur, 32)
        variants = ty[2]
        if index >= len(variants):
            raise Undecodable(f"unknown {ty[1]} variant index {index}")
        name, shape, payload = variants[index]
        if shape == "unit":
            return name
        if shape == "newtype":
            return {name: decode(cur, payload)}
        return {name: {fname: decode(cur, fty) for fname, fty in payload}}
    raise AssertionError(f"bad schema type {ty!r}")


def struct_(*fields):
    return ("struct", list(fields))


# §1.4
GPU_INFO = struct_(("index", "u32"), ("name", "str"), ("uuid", ("opt", "str")), ("vram_total_mib", "u64"))
GPU_READING = struct_(
    ("index", "u32"),
    ("vram_used_mib", ("opt", "u64")),
    ("vram_total_mib", ("opt", "u64")),
    ("utilization_pct", ("opt", "f32")),
    ("temperature_c", ("opt", "f32")),
    ("power_w", ("opt", "f32")),
)
PRICE_QUOTE = struct_(
    ("source", "str"), ("micro_usd_per_hour", "u64"), ("offer_id", ("opt", "str")), ("quoted_at", "i64")
)
ACTOR = ("enum", "Actor", [
    ("agent", "newtype", "str"),
    ("operator", "newtype", "str"),
    ("auditor", "newtype", "str"),
    ("system", "unit", None),
])
DEVICE_KIND = ("enum", "DeviceKind", [
    ("local", "unit", None),
    ("ssh", "struct", [("target", "str")]),
    ("rental", "struct", [("provider", "str"), ("instance_id", "str")]),
])
CERT_ROLE = ("enum", "CertRole", [
    ("agent", "newtype", "str"),
    ("operator", "newtype", "str"),
    ("auditor", "newtype", "str"),
])
# §1.3: the index in this list is the stored type tag.
EVENT = ("enum", "Event", [
    ("device_enrolled", "struct", [
        ("device_id", "str"), ("kind", DEVICE_KIND), ("hostname", ("opt", "str")),
        ("labels", ("map", "str", "str"))]),
    ("device_registered", "struct", [
        ("device_id", "str"), ("hostname", ("opt", "str")), ("gpus", ("vec", GPU_INFO))]),
    ("telemetry_recorded", "struct", [
        ("device_id", "str"), ("sampled_at", "i64"), ("gpus", ("vec", GPU_READING))]),
    ("device_decommissioned", "struct", [("device_id", "str"), ("reason", "str")]),
    ("job_dispatched", "struct", [
        ("job_id", "str"), ("device_id", "str"), ("model", "str"), ("vram_mib", "u64"),
        ("price", ("opt", PRICE_QUOTE))]),
    ("job_started", "struct", [("job_id", "str")]),
    ("job_completed", "struct", [("job_id", "str"), ("exit_status", "i32")]),
    ("job_failed", "struct", [("job_id", "str"), ("exit_status", ("opt", "i32")), ("reason", "str")]),
    ("rental_price_quoted", "struct", [
        ("provider", "str"), ("gpu_name", "str"), ("gpu_count", "u32"), ("micro_usd_per_hour", "u64"),
        ("offer_id", ("opt", "str")), ("quoted_at", "i64")]),
    ("device_rate_set", "struct", [("device_id", "str"), ("micro_usd_per_hour", "u64")]),
    ("certificate_issued", "struct", [
        ("role", CERT_ROLE), ("fingerprint", "hash32"), ("serial", "str"), ("not_after", "i64")]),
    ("certificate_revoked", "struct", [("fingerprint", "hash32"), ("reason", "str")]),
    ("bootstrap_token_created", "struct", [
        ("token_hash", "hash32"), ("device_id", "str"), ("expires_at", "i64")]),
    ("bootstrap_token_used", "struct", [("token_hash", "hash32")]),
    ("host_key_pinned", "struct", [("device_id", "str"), ("key_fingerprint", "str")]),
    ("host_probed", "struct", [
        ("device_id", "str"), ("ok", "bool"), ("detail", "str"), ("gpus", ("vec", GPU_READING))]),
    ("rental_instance_observed", "struct", [
        ("provider", "str"), ("instance_id", "str"), ("gpu_name", "str"), ("gpu_count", "u32"),
        ("status", "str"), ("micro_usd_per_hour", ("opt", "u64"))]),
])
# §1.2
EVENT_RECORD = struct_(
    ("seq", "u64"), ("recorded_at", "i64"), ("command_id", "str"), ("actor", ACTOR),
    ("stream_version", "u64"), ("event", EVENT),
)


def decode_body(body):
    """Decodes a stored body (§1): version byte 0x01, an EventRecord, nothing left over."""
    if not body:
        raise Undecodable("event body is empty")
    if len(body) > MIB:
        raise Undecodable(f"event body is {len(body)} bytes, over the 1 MiB limit")
    if body[0] != 0x01:
        raise Undecodable(f"unknown event body format version {body[0]}")
    cur = Cursor(body)
    cur.pos = 1
    record = decode(cur, EVENT_RECORD)
    if cur.pos != len(body):
        raise Undecodable(f"event body has {len(body) - cur.pos} trailing bytes")
    return record


# --------------------------------------------------------------------------------------------------
# §2 Hash chain, §3 Merkle tree.
# --------------------------------------------------------------------------------------------------

CHAIN_TAG = b"hwledger/chain/v1\x00"
GENESIS = bytes(32)


def chain_hash(prev, body):
    return hashlib.sha256(CHAIN_TAG + prev + body).digest()


def leaf_hash(body):
    return hashlib.sha256(b"\x00" + body).digest()


def node_hash(left, right):
    return hashlib.sha256(b"\x01" + left + right).digest()


class MerkleTree:
    """The right edge of an RFC 6962 tree: (subtree size, root) of each perfect subtree, largest first."""

    def __init__(self):
        self.size = 0
        self.peaks = []

    def append(self, leaf):
        self.size += 1
        self.peaks.append((1, leaf))
        while len(self.peaks) >= 2 and self.peaks[-1][0] == self.peaks[-2][0]:
            (n, right), (_, left) = self.peaks.pop(), self.peaks.pop()
            self.peaks.append((2 * n, node_hash(left, right)))

    def root(self):
        if not self.peaks:
            return hashlib.sha256(b"").digest()
        acc = self.peaks[-1][1]
        for _, left in reversed(self.peaks[:-1]):
            acc = node_hash(left, acc)
        return acc


# --------------------------------------------------------------------------------------------------
# Ed25519 verification (RFC 8032 §5.1), with Python integers.
# --------------------------------------------------------------------------------------------------

P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493  # order of the base point
D = (-121665 * pow(121666, P - 2, P)) % P
SQRT_M1 = pow(2, (P - 1) // 4, P)
IDENTITY = (0, 1, 1, 0)  # extended coordinates (X, Y, Z, T), x = X/Z, y = Y/Z, x*y = T/Z


def point_add(a, b):
    """RFC 8032 §5.1.4 addition in extended coordinates (complete: also doubles)."""
    x1, y1, z1, t1 = a
    x2, y2, z2, t2 = b
    pa = (y1 - x1) * (y2 - x2) % P
    pb = (y1 + x1) * (y2 + x2) % P
    pc = t1 * 2 * D * t2 % P
    pd = z1 * 2 * z2 % P
    e, f, g, h = pb - pa, pd - pc, pd + pc, pb + pa
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def point_mul(k, point):
    result = IDENTITY
    while k > 0:
        if k & 1:
            result = point_add(result, point)
        point = point_add(point, point)
        k >>= 1
    return result


def point_equal(a, b):
    x1, y1, z1, _ = a
    x2, y2, z2, _ = b
    return (x1 * z2 - x2 * z1) % P == 0 and (y1 * z2 - y2 * z1) % P == 0


def point_decompress(s):
    """RFC 8032 §5.1.3; None for an invalid encoding (including a non-canonical y >= p)."""
    if len(s) != 32:
        return None
    y = int.from_bytes(s, "little")
    sign = y >> 255
    y &= (1 << 255) - 1
    if y >= P:
        return None
    u = (y * y - 1) % P
    v = (D * y * y + 1) % P
    x = u * pow(v, 3, P) * pow(u * pow(v, 7, P), (P - 5) // 8, P) % P
    vxx = v * x * x % P
    if vxx == u:
        pass
    elif vxx == (-u) % P:
        x = x * SQRT_M1 % P
    else:
        return None
    if x == 0 and sign == 1:
        return None
    if x & 1 != sign:
        x = P - x
    return (x, y, 1, x * y % P)


BASE = point_decompress((4 * pow(5, P - 2, P) % P).to_bytes(32, "little"))


def small_order(point):
    return point_equal(point_mul(8, point), IDENTITY)


def ed25519_verify(public_key, message, signature):
    """True if `signature` is a valid RFC 8032 Ed25519 signature of `message` by `public_key`; small-order
    public keys and R values are refused and the cofactorless equation is used (FORMAT.md §5.3)."""
    if len(signature) != 64 or len(public_key) != 32:
        return False
    a = point_decompress(public_key)
    r = point_decompress(signature[:32])
    if a is None or r is None:
        return False
    s = int.from_bytes(signature[32:], "little")
    if s >= L:
        return False
    if small_order(a) or small_order(r):
        return False
    k = int.from_bytes(hashlib.sha512(signature[:32] + public_key + message).digest(), "little") % L
    return point_equal(point_mul(s, BASE), point_add(r, point_mul(k, a)))


# --------------------------------------------------------------------------------------------------
# §5 Keys, signed notes, checkpoints.
# --------------------------------------------------------------------------------------------------


class NoteError(Exception):
    """A signed note or checkpoint that does not open (§5.3)."""


class UsageError(Exception):
    """Bad command-line input: exit 2."""


B64_ALPHABET = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")
# Unicode White_Space code points (what a key name may not contain, with '+' and control characters).
WHITE_SPACE = set(map(chr, [*range(0x09, 0x0E), 0x20, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B),
                            0x2028, 0x2029, 0x202F, 0x205F, 0x3000]))


def is_control(ch):
    """Unicode general category Cc."""
    return ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F


def b64_strict(text):
    """Canonical padded standard base64 (§0), or None."""
    if not set(text) <= B64_ALPHABET:
        return None
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if base64.b64encode(raw).decode("ascii") == text else None


def valid_key_name(name):
    return bool(name) and "+" not in name and not any(c in WHITE_SPACE or is_control(c) for c in name)


def key_id(name, public_key):
    digest = hashlib.sha256(name.encode("utf-8") + b"\n\x01" + public_key).digest()
    return int.from_bytes(digest[:4], "big")


def parse_vkey(text):
    """`name+hex8+base64(0x01 || public key)` (§5.2) -> (name, key id, public key)."""
    if text.startswith("PRIVATE+KEY+"):
        raise UsageError("this is a signer (private) key, not a verifier key")
    fields = text.split("+", 2)
    if len(fields) != 3:
        raise UsageError(f"a vkey has 3 '+'-separated fields, found {len(fields)}")
    name, hex_id, material = fields
    if not valid_key_name(name):
        raise UsageError(f"invalid key name {name!r}")
    if len(hex_id) != 8 or not set(hex_id) <= set("0123456789abcdef"):
        raise UsageError(f"key ID {hex_id!r} is not 8 lowercase hex digits")
    raw = b64_strict(material)
    if raw is None:
        raise UsageError("the key is not canonical base64")
    if len(raw) != 33 or raw[0] != 0x01:
        raise UsageError("the key is not 0x01 followed by a 32-byte Ed25519 public key")
    public_key = raw[1:]
    point = point_decompress(public_key)
    if point is None or small_order(point):
        raise UsageError("the key is not a usable Ed25519 public key")
    if key_id(name, public_key) != int(hex_id, 16):
        raise UsageError(f"key ID {hex_id} does not match the name and key")
    return name, int(hex_id, 16), public_key


def open_note(note, vkey):
    """§5.3 steps 1-3: returns the signed text."""
    name, kid, public_key = vkey
    raw = note.encode("utf-8")
    if len(raw) > MIB:
        raise NoteError("note is larger than 1 MiB")
    if any(b < 0x20 and b != 0x0A for b in raw):
        raise NoteError("note contains a control character")
    split = note.rfind("\n\n")
    if split < 0:
        raise NoteError("note has no blank line before its signatures")
    text, block = note[:split + 1], note[split + 2:]
    if not block:
        raise NoteError("note has no signature lines")
    if not block.endswith("\n"):
        raise NoteError("the last signature line does not end with a newline")
    verified = False
    for i, line in enumerate(block[:-1].split("\n")):
        if i >= 100:
            raise NoteError("note has more than 100 signature lines")
        if not line.startswith("\u2014 "):
            raise NoteError(f"signature line {i + 1} does not start with an em dash and a space")
        sig_name, sep, b64 = line[2:].partition(" ")
        if not sep or not valid_key_name(sig_name) or not b64:
            raise NoteError(f"signature line {i + 1} is malformed")
        blob = b64_strict(b64)
        if blob is None or len(blob) < 5:
            raise NoteError(f"signature line {i + 1} has an invalid signature")
        if sig_name != name or int.from_bytes(blob[:4], "big") != kid:
            continue  # someone else's key (a witness, an unknown key): ignored
        if not ed25519_verify(public_key, text.encode("utf-8"), blob[4:]):
            raise NoteError(f"the signature by {name} does not verify")
        verified = True
    if not verified:
        raise NoteError(f"the note has no signature by {name}")
    return text


def parse_checkpoint(text):
    """§5.1, strictly -> (origin, size, root)."""
    if not text.endswith("\n"):
        raise NoteError("checkpoint text does not end with a newline")
    lines = text[:-1].split("\n")
    if any(is_control(c) for line in lines for c in line):
        raise NoteError("checkpoint contains a control character")
    if len(lines) < 3:
        raise NoteError("checkpoint has fewer than 3 lines")
    origin, size_text, root_text = lines[0], lines[1], lines[2]
    if not origin:
        raise NoteError("checkpoint origin is empty")
    if not size_text or not all("0" <= c <= "9" for c in size_text) or (len(size_text) > 1 and size_text[0] == "0"):
        raise NoteError(f"checkpoint size {size_text!r} is not a canonical decimal number")
    size = int(size_text)
    if size >= 2**64:
        raise NoteError("checkpoint size does not fit in 64 bits")
    root = b64_strict(root_text)
    if root is None or len(root) != 32:
        raise NoteError("checkpoint root is not canonical base64 of 32 bytes")
    if any(not line for line in lines[3:]):
        raise NoteError("checkpoint has an empty extension line")
    return origin, size, root


def open_checkpoint(note, vkey):
    origin, size, root = parse_checkpoint(open_note(note, vkey))
    if origin != vkey[0]:
        raise NoteError(f"checkpoint origin {origin!r} is not the key's name {vkey[0]!r}")
    return size, root


def checkpoint_size_unverified(note):
    """The size on a note's second line, read before its signature is checked (§7.2)."""
    split = note.find("\n\n")
    if split < 0:
        return None
    try:
        return parse_checkpoint(note[:split + 1])[1]
    except NoteError:
        return None


# --------------------------------------------------------------------------------------------------
# §6 The export file.
# --------------------------------------------------------------------------------------------------


class Framing(Exception):
    """The export file is malformed (§7.2)."""


def read_export(path, feed):
    """Reads the file, calling feed(body, hash) per event (or skipping bodies when feed is None).
    Returns (count, checkpoint or None, vkey or None); raises Framing or OSError."""
    with open(path, "rb") as f:
        file_size = os.fstat(f.fileno()).st_size

        def need(n, what):
            data = f.read(n)
            if len(data) != n:
                raise Framing(f"file ends inside {what}")
            return data

        header = need(13, "header")
        if header[:4] != b"HWLX":
            raise Framing("not an hwledger export (bad magic)")
        if header[4] != 0x01:
            raise Framing(f"unknown export format {header[4]}")
        count = struct.unpack("<Q", header[5:13])[0]
        i = 0
        while i < count:
            i += 1
            length = struct.unpack("<I", need(4, f"the length of event {i}"))[0]
            if length > MIB:
                raise Framing(f"event {i}: body of {length} bytes exceeds 1 MiB")
            if feed is None:
                if f.tell() + length + 32 > file_size:
                    raise Framing(f"file ends inside event {i}")
                f.seek(length + 32, os.SEEK_CUR)
            else:
                body = need(length, f"the body of event {i}")
                feed(body, need(32, f"the hash of event {i}"))

        def section(what):
            length = struct.unpack("<I", need(4, f"the {what} length"))[0]
            if length > MIB:
                raise Framing(f"{what} section of {length} bytes exceeds 1 MiB")
            if length == 0:
                return None
            try:
                return need(length, f"the {what}").decode("utf-8", errors="strict")
            except UnicodeDecodeError:
                raise Framing(f"the {what} is not UTF-8") from None

        checkpoint = section("checkpoint")
        vkey = section("verifier key")
        if f.read(1):
            raise Framing("trailing bytes after the last section")
        return count, checkpoint, vkey


# --------------------------------------------------------------------------------------------------
# §7 Verification.
# --------------------------------------------------------------------------------------------------


class Walk:
    """The event walk of §7.3 and the final checks of §7.4."""

    def __init__(self, needed_sizes, head_seq_wanted, dump):
        self.breaks = []  # (seq, kind, detail)
        self.events = 0
        self.expected = 1
        self.prev = None  # (seq, stored hash)
        self.missing = []  # sorted, disjoint [first, last] runs
        self.head_seq = 0
        self.tree = MerkleTree()
        self.needed = set(needed_sizes)
        self.roots = {}
        self.want_head = head_seq_wanted
        self.head_found = None
        self.dump = dump

    def add(self, seq, kind, detail):
        self.breaks.append((seq, kind, detail))

    def _take_missing(self, seq):
        """Removes `seq` from the missing runs; True if it was there."""
        i = bisect.bisect_right(self.missing, [seq, float("inf")]) - 1
        if i < 0 or not self.missing[i][0] <= seq <= self.missing[i][1]:
            return False
        first, last = self.missing.pop(i)
        if seq < last:
            self.missing.insert(i, [seq + 1, last])
        if first < seq:
            self.missing.insert(i, [first, seq - 1])
        return True

    def event(self, body, stored):
        self.events += 1
        position = self.expected
        try:
            record = decode_body(body)
            seq = record["seq"]
            if self.dump is not None:
                self.dump.write(json.dumps(record, sort_keys=True) + "\n")
        except Undecodable as e:
            self.add(position, "undecodable", str(e))
            seq = position
            if self.dump is not None:
                self.dump.write(json.dumps({"undecodable": str(e)}) + "\n")
        if seq > position:
            self.missing.append([position, seq - 1])
            self.expected = seq + 1
        elif seq < position:
            late = self._take_missing(seq)
            self.add(seq, "events_reordered",
                     f"event {seq} {'is stored after' if late else 'appears again after'} event {position - 1}")
        else:
            self.expected = seq + 1
        if self.prev is None:
            predecessor = GENESIS if seq == 1 else None
        else:
            predecessor = self.prev[1] if self.prev[0] + 1 == seq else None
        if predecessor is not None:
            computed = chain_hash(predecessor, body)
            if computed != stored:
                self.add(seq, "payload_altered",
                         f"stored hash {stored.hex()} but SHA-256(tag || predecessor || body) is {computed.hex()}")
        self.prev = (seq, stored)
        if self.want_head == seq:
            self.head_found = stored
        self.head_seq = max(self.head_seq, seq)
        self.tree.append(leaf_hash(body))
        if self.tree.size in self.needed:
            self.roots[self.tree.size] = self.tree.root()

    def root_at(self, size, root):
        if size == self.tree.size:
            return root
        return self.roots.get(size) if 1 <= size < self.tree.size else None

    def finish(self, checkpoint, vkey, head, since):
        for first, last in self.missing:
            if last - first + 1 > MAX_MISSING_LINES:
                self.add(first, "event_missing", f"events {first} through {last} are missing")
            else:
                for seq in range(first, last + 1):
                    self.add(seq, "event_missing", f"event {seq} is missing")
        root = self.tree.root()
        n = self.tree.size
        if head is not None:
            seq, want = head
            if self.head_seq < seq:
                self.add(self.head_seq + 1, "truncated", f"log ends at seq {self.head_seq}, recorded head is {seq}")
            elif self.head_found is not None and self.head_found != want:
                self.add(seq, "head_mismatch", f"hash at seq {seq} is {self.head_found.hex()}, recorded {want.hex()}")
        latest = None
        if checkpoint is not None:
            # With a key the checkpoint must open; without one its signature cannot be checked, but it must
            # still be a checkpoint of these events (§7.1, §7.4 step 3).
            try:
                if vkey is not None:
                    size, claimed_root = open_checkpoint(checkpoint, vkey)
                else:
                    print("note: the file's checkpoint signature was not checked (no --vkey)", file=sys.stderr)
                    split = checkpoint.find("\n\n")
                    if split < 0:
                        raise NoteError("no signature block")
                    _, size, claimed_root = parse_checkpoint(checkpoint[:split + 1])
            except NoteError as e:
                self.add(self.head_seq, "checkpoint_mismatch", f"checkpoint does not verify: {e}")
            else:
                found = self.root_at(size, root)
                if found is None:
                    self.add(size, "truncated", f"checkpoint covers {size} events but the file has {n}")
                elif found != claimed_root:
                    self.add(size, "checkpoint_mismatch",
                             f"root {claimed_root.hex()} for size {size}, events give {found.hex()}")
                if vkey is not None:
                    latest = size
        if since is not None:
            try:
                old_size, old_root = open_checkpoint(since, vkey)
            except NoteError as e:
                self.add(0, "checkpoint_mismatch", f"older checkpoint does not verify: {e}")
            else:
                found = self.root_at(old_size, root)
                if found is None:
                    self.add(n + 1, "truncated", f"older checkpoint covers {old_size} events but the file has {n}")
                elif found != old_root:
                    self.add(old_size, "inconsistent", f"the first {old_size} events do not hash to the older root")
                elif latest is not None and latest < old_size:
                    self.add(latest, "inconsistent", "the file's checkpoint is smaller than the older one")
        self.breaks.sort(key=lambda b: (b[0], b[1]))
        return root


def load_vkey(arg):
    text = arg
    if os.path.exists(arg):
        with open(arg, "rb") as f:
            try:
                text = f.read().decode("utf-8")
            except UnicodeDecodeError:
                raise UsageError(f"{arg} is not UTF-8") from None
    return parse_vkey(text.strip())


def parse_head(text):
    seq, sep, hex_hash = text.partition(":")
    if not sep or not seq.isdigit() or len(hex_hash) != 64:
        raise UsageError("--head must be SEQ:HASH with a 64-hex-digit hash")
    try:
        return int(seq), bytes.fromhex(hex_hash)
    except ValueError:
        raise UsageError("--head HASH must be 64 hex digits") from None


def run(args):
    vkey = load_vkey(args.vkey) if args.vkey is not None else None
    head = parse_head(args.head) if args.head is not None else None
    since = None
    if args.since is not None:
        if vkey is None:
            raise UsageError("--since needs --vkey to check the older checkpoint's signature")
        with open(args.since, "rb") as f:
            try:
                since = f.read().decode("utf-8")
            except UnicodeDecodeError:
                raise UsageError(f"{args.since} is not UTF-8") from None

    # First pass: the sizes whose roots are needed (§7.2), read without hashing.
    needed = []
    try:
        _, trailer_checkpoint, _ = read_export(args.file, None)
        if trailer_checkpoint is not None:
            needed.append(checkpoint_size_unverified(trailer_checkpoint))
    except Framing:
        pass
    if since is not None:
        needed.append(checkpoint_size_unverified(since))

    dump = open(args.dump, "w", encoding="utf-8") if args.dump else None
    try:
        walk = Walk([s for s in needed if s is not None], head[0] if head else None, dump)
        try:
            _, checkpoint, _ = read_export(args.file, walk.event)
        except Framing as e:
            walk.add(walk.events + 1, "framing", str(e))
            checkpoint = None
        root = walk.finish(checkpoint, vkey, head, since)
    finally:
        if dump is not None:
            dump.close()

    if not walk.breaks:
        print(f"OK {walk.events} {root.hex()}")
        return 0
    for seq, kind, detail in walk.breaks:
        extra = ""
        if kind == "event_missing" and detail.startswith("events "):
            extra = f" through={detail.split()[3]}"
        print(f"BROKEN seq={seq} kind={kind}{extra}")
        print(f"  seq {seq} {kind}: {detail}", file=sys.stderr)
    return 1


def main():
    parser = argparse.ArgumentParser(description="Verify an hwledger export / bundle (docs/FORMAT.md).")
    parser.add_argument("file", help="the export or bundle file")
    parser.add_argument("--vkey", help="pinned verifier key, or a file containing it")
    parser.add_argument("--head", help="a recorded head SEQ:HASH the log must reach")
    parser.add_argument("--since", help="an older signed checkpoint (file) the log must extend")
    parser.add_argument("--dump", help="write every decoded event as a JSON line to this file")
    args = parser.parse_args()  # exits 2 on a usage error
    try:
        return run(args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
