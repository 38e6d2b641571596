"""`tokenizer.mtok` (MNN's binary "pipeline" tokenizer, type 4): parsed and run as MNN's PipelineTokenizer runs it.

Layout after the text header (llmexport `export_mtok`, MNN `load_vocab_binary`; little endian, strings as u16 length +
UTF-8): normalizer, pre-tokenizer (both recursive, a u8 type first), the model (u8 type, u32 vocab size, then by type:
0 = BPE: u8 byte_fallback, u8 byte_level, u32 merges, the vocabulary sorted by string as (str, u32 id), the merges as
(u32 id, u32 id, u32 rank); 1 = WordPiece: str unk token, str continuing-subword prefix, u32 max input length, the
vocabulary as for BPE; 2 = Unigram, not read here), the decoder, the added tokens (u32 id, u8 special, u8 lstrip,
u8 rstrip, str), then the chat template and flags (not needed to encode).
"""

from __future__ import annotations

import struct
import unicodedata
from pathlib import Path

import regex

from sanaedit.errors import TokenizerFileError
from sanaedit.formats.bpe import BYTE_CHARS, CHAR_BYTES, GPT2_PATTERN, MnnTokenizer, bpe_merge, is_punctuation, nfc_like


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def take(self, fmt: str):
        values = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return values if len(values) > 1 else values[0]

    def raw(self) -> bytes:
        size = self.take("H")
        if self.pos + size > len(self.data):
            raise struct.error("string past the end of the file")
        out = self.data[self.pos : self.pos + size]
        self.pos += size
        return out

    def text(self) -> str:
        return self.raw().decode("utf-8")

    def table(self) -> dict[int, str]:
        out = {}
        for _ in range(self.take("I")):
            cp = self.take("I")
            out[cp] = self.text()
        return out


# ------------------------------------------------------------------------------------------------- normalizers
def _normalizer(r: _Reader):
    kind = r.take("B")
    if kind == 0:
        return None
    if kind == 1:  # the old format: an empty table, which the engine applies as no change
        return lambda s: s
    if kind == 2:
        prefix = r.text()
        return lambda s: prefix + s
    if kind == 3:
        pattern, content = r.text(), r.text()
        return lambda s: s.replace(pattern, content) if pattern else s
    if kind == 4:
        parts = [n for n in (_normalizer(r) for _ in range(r.take("I"))) if n is not None]

        def sequence(s):
            for n in parts:
                s = n(s)
            return s

        return sequence
    if kind in (5, 7):
        clean, chinese, strip, lower = r.take("BBBB")
        table = r.table() if kind == 7 and strip else {}
        return lambda s: _bert_normalize(s, clean, chinese, strip and bool(table), lower, table)
    if kind == 6:
        table = r.table()
        return (lambda s: nfc_like(s, table)) if table else (lambda s: s)
    if kind == 8:
        left, right = r.take("BB")
        return lambda s: s.lstrip() if left and not right else s.rstrip() if right and not left else s.strip()
    raise TokenizerFileError(f"normalizer type {kind} is unknown")


def _is_chinese(cp: int) -> bool:
    return any(
        a <= cp <= b
        for a, b in (
            (0x4E00, 0x9FFF),
            (0x3400, 0x4DBF),
            (0x20000, 0x2A6DF),
            (0x2A700, 0x2B73F),
            (0x2B740, 0x2B81F),
            (0x2B820, 0x2CEAF),
            (0xF900, 0xFAFF),
            (0x2F800, 0x2FA1F),
        )
    )


def _bert_normalize(s: str, clean: int, chinese: int, strip: bool, lower: int, table: dict[int, str]) -> str:
    out = []
    for ch in s:
        cp = ord(ch)
        if clean and (ch in "\t\n\r" or unicodedata.category(ch) == "Zs"):
            out.append(" ")
        elif clean and (cp in (0, 0xFFFD) or unicodedata.category(ch) == "Cc"):
            continue
        elif chinese and _is_chinese(cp):
            out.append(f" {ch} ")
        elif strip:
            out.append("".join(c for c in table.get(cp, ch) if not unicodedata.category(c).startswith("M")))
        else:
            out.append(ch)
    text = "".join(out)
    return text.lower() if lower else text


# --------------------------------------------------------------------------------------------- pre-tokenizers
def _pre_tokenizer(r: _Reader):
    kind = r.take("B")
    if kind == 0:
        return None
    if kind == 1:
        use_regex = r.take("B")
        pattern = regex.compile(GPT2_PATTERN) if use_regex else None

        def byte_level(splits):
            if pattern is not None:
                splits = [m.group() for s in splits if s for m in pattern.finditer(s)]
            return ["".join(BYTE_CHARS[b] for b in s.encode("utf-8")) for s in splits]

        return byte_level
    if kind == 2:
        individual = r.take("B")

        def digits(splits):
            if not individual:  # the engine only splits with individual_digits
                return splits
            out = []
            for s in splits:
                out += [p for p in regex.split(r"([0-9])", s) if p]
            return out

        return digits
    if kind == 3:
        replacement, prefix_space = r.text(), r.take("B")

        def metaspace(splits):
            return [(" " + s if prefix_space and s and s[0] != " " else s).replace(" ", replacement) for s in splits]

        return metaspace
    if kind == 4:
        pattern, invert, behavior = regex.compile(r.text()), r.take("B"), r.take("B")
        return lambda splits: [p for s in splits if s for p in _split(s, pattern, invert, behavior)]
    if kind == 5:
        return lambda splits: [p for s in splits for p in _bert_split(s)]
    if kind == 6:
        parts = [p for p in (_pre_tokenizer(r) for _ in range(r.take("I"))) if p is not None]

        def sequence(splits):
            for p in parts:
                splits = p(splits)
            return splits

        return sequence
    raise TokenizerFileError(f"pre-tokenizer type {kind} is unknown")


def _split(s: str, pattern, invert: int, behavior: int) -> list[str]:
    """tokenizers' Split: 0 isolated, 2 merged with previous, anything else removed (as the engine reads it)."""
    pieces, pos = [], 0
    for m in pattern.finditer(s):
        if m.end() == m.start():
            continue
        if m.start() > pos:
            pieces.append((s[pos : m.start()], False))
        pieces.append((m.group(), True))
        pos = m.end()
    if pos < len(s):
        pieces.append((s[pos:], False))
    if invert:
        pieces = [(p, not matched) for p, matched in pieces]
    if behavior == 0:
        return [p for p, _ in pieces]
    if behavior == 2:
        out: list[str] = []
        for p, matched in pieces:
            if matched and out:
                out[-1] += p
            else:
                out.append(p)
        return out
    return [p for p, matched in pieces if not matched]


def _bert_split(s: str) -> list[str]:
    out, current = [], ""
    for ch in s:
        if ch.isspace():
            if current:
                out.append(current)
            current = ""
        elif is_punctuation(ch):
            if current:
                out.append(current)
            out.append(ch)
            current = ""
        else:
            current += ch
    return out + ([current] if current else [])


# ------------------------------------------------------------------------------------------------ the models
class _IdRanks:
    def __init__(self, merges: dict[tuple[int, int], int], tokens: list[str | None], ids: dict[str, int]):
        self.merges, self.tokens, self.ids = merges, tokens, ids

    def __call__(self, a, b):
        return self.merges.get((a, b))

    def merge(self, a, b):
        return self.ids.get((self.tokens[a] or "") + (self.tokens[b] or ""))


class _BpeModel:
    def __init__(self, ranks: _IdRanks, byte_level: bool):
        self.ranks, self.byte_level = ranks, byte_level

    def __call__(self, s: str) -> list[int]:
        ids = self.ranks.ids
        if self.byte_level:
            symbols = [ids.get(BYTE_CHARS[b]) for b in s.encode("utf-8")]
        else:
            symbols = []
            for ch in s:
                found = ids.get(ch)
                if found is None:  # byte fallback pieces, when the vocabulary has them
                    symbols += [ids.get(f"<0x{b:02X}>") for b in ch.encode("utf-8")]
                else:
                    symbols.append(found)
        return bpe_merge([i for i in symbols if i is not None], self.ranks)


class _WordPieceModel:
    """The engine's WordPieceModel: greedy longest match, the prefix on every piece but the first, the whole word
    as the unknown token when a piece is missing. It measures and cuts words in UTF-8 bytes, as the engine does."""

    def __init__(self, path: Path, ids: dict[str, int], unk: str, prefix: str, max_bytes: int):
        self.path, self.max_bytes = path, max_bytes
        self.ids = {token.encode("utf-8"): i for token, i in ids.items()}
        self.unk, self.prefix = ids.get(unk), prefix.encode("utf-8")

    def __call__(self, s: str) -> list[int]:
        word = s.encode("utf-8")
        if not word:
            return []
        if len(word) > self.max_bytes:
            return self._unknown()
        out, start = [], 0
        while start < len(word):
            for end in range(len(word), start, -1):
                found = self.ids.get(word[start:end] if start == 0 else self.prefix + word[start:end])
                if found is not None and found != self.unk:  # the engine never matches the unknown token itself
                    out.append(found)
                    start = end
                    break
            else:
                return self._unknown()
        return out

    def _unknown(self) -> list[int]:
        if self.unk is None:  # the engine would feed id -1
            raise TokenizerFileError(f"{self.path}: a word needs the unknown token, which the vocabulary lacks")
        return [self.unk]


class PipelineTokenizer(MnnTokenizer):
    def __init__(self, path, specials, prefix, normalizer, pre_tokenizer, tokens: list, model, decodes_bytes):
        super().__init__(path, specials, prefix)
        self.normalizer, self.pre_tokenizer, self.tokens, self.model = normalizer, pre_tokenizer, tokens, model
        self.decodes_bytes = decodes_bytes
        self.added: list[tuple[bytes, int, bool, bool]] = []

    def decode_id(self, token_id):
        tokens = self.tokens
        token = tokens[token_id] if 0 <= token_id < len(tokens) and tokens[token_id] is not None else ""
        token = token.replace("\u2581", " ")
        if self.decodes_bytes:  # the byte-level map reversed, other characters kept
            return b"".join(bytes([CHAR_BYTES[c]]) if c in CHAR_BYTES else c.encode("utf-8") for c in token)
        return token.encode("utf-8")

    def encode_text(self, data):
        out, last = [], 0
        while last < len(data):
            hit = None  # the earliest, then longest, added token
            for content, token_id, lstrip, rstrip in self.added:
                at = data.find(content, last)
                if at >= 0 and (hit is None or at < hit[0] or (at == hit[0] and len(content) > len(hit[1]))):
                    hit = (at, content, token_id, lstrip, rstrip)
            if hit is None:
                out += self._model(data[last:])
                break
            at, content, token_id, lstrip, rstrip = hit
            end, after = at, at + len(content)
            while lstrip and end > last and data[end - 1 : end].isspace():
                end -= 1
            while rstrip and after < len(data) and data[after : after + 1].isspace():
                after += 1
            if end > last:
                out += self._model(data[last:end])
            out.append(token_id)
            last = after
        return out

    def _model(self, data: bytes) -> list[int]:
        text = data.decode("utf-8", errors="replace")
        if self.normalizer is not None:
            text = self.normalizer(text)
        if not text:
            return []
        splits = self.pre_tokenizer([text]) if self.pre_tokenizer is not None else [text]
        out = []
        for s in splits:
            if s:
                out += self.model(s)
        return out


def _skip_decoder(r: _Reader) -> bool:
    """Read past the decoder; True when it decodes byte-level (the engine then maps special tokens back to bytes)."""
    kind = r.take("B")
    if kind == 0:
        return True
    if kind in (2, 3):
        r.raw()
        r.take("B")
    elif kind == 5:
        r.raw()
        r.raw()
    elif kind == 6:
        r.raw()
        r.take("II")
    elif kind == 7:
        found = False
        for _ in range(r.take("I")):
            found = _skip_decoder(r) or found
        return found
    elif kind not in (1, 4):
        return False  # the engine stops reading decoders here too
    return False


def _vocabulary(r: _Reader, path: Path, size: int) -> tuple[list[str | None], dict[str, int]]:
    """(str, u32 id) pairs: tokens by id, and ids by token (the first of equal strings, as the engine's search)."""
    tokens: list[str | None] = [None] * size
    ids: dict[str, int] = {}
    for _ in range(size):
        token = r.text()
        token_id = r.take("I")
        if token_id >= size:
            raise TokenizerFileError(f"{path}: token id {token_id} outside the vocabulary of {size}")
        tokens[token_id] = token
        ids.setdefault(token, token_id)
    return tokens, ids


def parse_pipeline(path: Path, specials: list[int], prefix: list[int], body: bytes) -> PipelineTokenizer:
    r = _Reader(body)
    normalizer = _normalizer(r)
    pre_tokenizer = _pre_tokenizer(r)
    model_type, vocab_size = r.take("BI")
    if model_type == 0:
        _, byte_level, n_merges = r.take("BBI")
        tokens, ids = _vocabulary(r, path, vocab_size)
        end = r.pos + 12 * n_merges
        if end > len(body):
            raise TokenizerFileError(f"{path}: truncated (the merge table runs past the end of the file)")
        merges = {(a, b): rank for a, b, rank in struct.iter_unpack("<III", body[r.pos : end])}
        r.pos = end
        model = _BpeModel(_IdRanks(merges, tokens, ids), bool(byte_level))
    elif model_type == 1:
        unk, subword_prefix, max_bytes = r.text(), r.text(), r.take("I")
        tokens, ids = _vocabulary(r, path, vocab_size)
        model = _WordPieceModel(path, ids, unk, subword_prefix, max_bytes)
    else:
        names = {2: "Unigram"}
        raise TokenizerFileError(
            f"{path}: a {names.get(model_type, model_type)} model is not supported (BPE and WordPiece only)"
        )
    decodes_bytes = _skip_decoder(r)
    tok = PipelineTokenizer(path, specials, prefix, normalizer, pre_tokenizer, tokens, model, decodes_bytes)
    for _ in range(r.take("I")):
        token_id = r.take("I")
        _special, lstrip, rstrip = r.take("BBB")
        tok.added.append((r.raw(), token_id, bool(lstrip), bool(rstrip)))
    return tok
