"""What MNN's tokenizer kinds share (formats/mnn_tokenizer.py, formats/mnn_tokenizer_pipeline.py): the encoder
interface, GPT-2's byte <-> character map, rank-ordered BPE merging and the text normalisation helpers."""

from __future__ import annotations

import unicodedata
from pathlib import Path

GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def bytes_to_unicode() -> list[str]:
    """GPT-2's byte -> printable character map (what byte-level BPE vocabularies are written in)."""
    keep = [*range(33, 127), *range(161, 173), *range(174, 256)]
    extra = iter(range(256, 512))
    return [chr(b) if b in keep else chr(next(extra)) for b in range(256)]


BYTE_CHARS = bytes_to_unicode()


CHAR_BYTES = {c: b for b, c in enumerate(BYTE_CHARS)}


def bpe_merge(symbols: list, rank) -> list:
    """Merge the adjacent pair of lowest rank (leftmost on ties) until none is mergeable."""
    while len(symbols) > 1:
        best, where = None, -1
        for i in range(len(symbols) - 1):
            r = rank(symbols[i], symbols[i + 1])
            if r is not None and (best is None or r < best):
                best, where = r, i
        if best is None:
            break
        merged = rank.merge(symbols[where], symbols[where + 1])
        if merged is None:
            break
        symbols[where : where + 2] = [merged]
    return symbols


class MnnTokenizer:
    """`encode(text) -> ids` as MNN's engine computes them (prefix tokens, special tokens, then the model)."""

    def __init__(self, path: Path, specials: list[int], prefix: list[int]):
        self.path, self.specials, self.prefix = path, specials, prefix
        self._special_strings: list[tuple[bytes, int]] | None = None

    def decode_id(self, token_id: int) -> bytes:  # pragma: no cover - overridden
        raise NotImplementedError

    def encode_text(self, data: bytes) -> list[int]:  # pragma: no cover - overridden
        raise NotImplementedError

    def encode(self, text: str) -> list[int]:
        if self._special_strings is None:
            strings = [(self.decode_id(i), i) for i in self.specials]
            self._special_strings = [(s, i) for s, i in strings if s]
        data, ids, start, i = text.encode("utf-8"), list(self.prefix), 0, 0
        while i < len(data):
            for token, token_id in self._special_strings:
                if data.startswith(token, i):
                    if i > start:
                        ids += self.encode_text(data[start:i])
                    ids.append(token_id)
                    start = i + len(token)
                    i = start - 1
                    break
            i += 1
        if start < len(data):
            ids += self.encode_text(data[start:])
        return ids


def nfc_like(text: str, table: dict[int, str]) -> str:
    """The engine's table normalizer (NFC/NFKC per code point) with its control-character rule."""
    out = []
    for ch in text:
        cp = ord(ch)
        if cp not in (0, 10, 13, 9) and (
            1 <= cp <= 0x1F
            or cp == 0x7F
            or 0x80 <= cp <= 0x9F
            or cp in (0x200D, 0x200C, 0x200B, 0xFEFF)
            or 0x200E <= cp <= 0x200F
            or 0x202A <= cp <= 0x202E
            or 0x2060 <= cp <= 0x2069
            or 0xFFF0 <= cp <= 0xFFF8
        ):
            out.append(" ")
        else:
            out.append(table.get(cp, ch))
    return "".join(out)


def is_punctuation(ch: str) -> bool:
    cp = ord(ch)
    return (
        unicodedata.category(ch).startswith("P")
        or 33 <= cp <= 47
        or 58 <= cp <= 64
        or 91 <= cp <= 96
        or 123 <= cp <= 126
    )
