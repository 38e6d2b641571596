"""MNN-LLM tokenizer files read in Python, encoded the way MNN's engine encodes them, so a release folder needs no
Hugging Face tokenizer: `tokenizer.txt` (older exporters) and `tokenizer.mtok` (newer).

The formats are llmexport's (`utils/tokenizer.py`, PyPI `llmexport`); the encoding follows MNN's reader
(`transformers/llm/engine/src/tokenizer/tokenizer.cpp`). Both start with a text header: `430 TYPE`, then
`NSPECIAL NSTOP NPREFIX` and those ids on one line. Then, by TYPE:

- 1 (tiktoken): a count, then one base64 token per line (id = line). The engine encodes by greedy longest match over
  the bytes (a trie), with no pre-tokenization.
- 2 (BERT, what llmexport writes for a BERT tokenizer without tokenizer.json): laid out as 1. The engine
  splits with its own fixed rules (ASCII letter-and-digit runs lowercased, each other ASCII symbol alone, each
  non-ASCII character alone, whitespace dropped), then WordPiece with `##` and `[UNK]`: not tokenizers' BERT
  pipeline beyond plain ASCII text.
- 3 (huggingface): `NVOCAB NMERGES`, the byte-level vocabulary (one token per line, id = line), the merge lines.
  The engine splits with its own regex (ASCII classes, std::regex), then runs byte-level BPE.
- 4 (pipeline, `.mtok`): binary normalizer, pre-tokenizer, BPE or WordPiece model, decoder and added tokens: a
  tokenizer.json in binary form, run as tokenizers runs it.

Before any of these, the engine cuts the text at the special tokens' strings (first listed match at each position).
Type 0 (SentencePiece) and Unigram models in `.mtok` are not read here and are refused by name.
"""

from __future__ import annotations

import base64
import re
import struct
from pathlib import Path

from sanaedit.errors import TokenizerFileError
from sanaedit.formats.bpe import BYTE_CHARS, CHAR_BYTES, MnnTokenizer, bpe_merge

MAGIC = 430
TIKTOKEN, BERT, HUGGINGFACE, PIPELINE = 1, 2, 3, 4
# MNN's HuggingfaceTokenizer regex (std::regex on bytes, icase; [:alpha:] / [:digit:] are ASCII there)
_HF_TXT_PATTERN = re.compile(
    rb"('s|'t|'re|'ve|'m|'ll|'d)|[^\r\na-zA-Z0-9]?[a-zA-Z]+|[0-9]| ?[^\sa-zA-Z0-9]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    re.IGNORECASE,
)


class TiktokenTokenizer(MnnTokenizer):
    def __init__(self, path, specials, prefix, tokens: list[bytes]):
        super().__init__(path, specials, prefix)
        self.tokens = tokens
        self.ids = {}
        for i, t in enumerate(tokens):
            self.ids.setdefault(t, i)
        self.longest = max(map(len, tokens), default=1)

    def decode_id(self, token_id):
        return self.tokens[token_id] if 0 <= token_id < len(self.tokens) else b""

    def encode_text(self, data):
        out, i = [], 0
        while i < len(data):
            for size in range(min(self.longest, len(data) - i), 0, -1):
                found = self.ids.get(data[i : i + size])
                if found is not None:
                    out.append(found)
                    i += size
                    break
            else:  # the engine logs "no encoding found" and moves on by one byte
                i += 1
        return out


class BertTxtTokenizer(TiktokenTokenizer):
    """The engine's BertTokenizer (type 2, the vocabulary laid out as type 1's): its fixed word split, then WordPiece.
    A word whose rest has no piece gets `[UNK]` (id 100 without one) after the pieces found so far, as the engine
    does."""

    def __init__(self, path, specials, prefix, tokens: list[bytes]):
        super().__init__(path, specials, prefix, tokens)
        self.unk = self.ids.get(b"[UNK]", 100)

    def encode_text(self, data):
        out = []
        for word in _BERT_TXT_WORDS.findall(data.decode("utf-8")):
            out += self._word_piece((word.lower() if word.isascii() else word).encode("utf-8"))
        return out

    def _word_piece(self, word: bytes) -> list[int]:
        if word in self.ids:
            return [self.ids[word]]
        out, rest = [], word
        while rest:
            for size in range(len(rest), 0, -1):
                found = self.ids.get((b"##" if out else b"") + rest[:size])
                if found is not None:
                    out.append(found)
                    rest = rest[size:]
                    break
            else:
                return [*out, self.unk]
        return out


# The engine's BertTokenizer split (C locale classes): an ASCII letter-and-digit run, or any other character but ASCII
# whitespace on its own.
_BERT_TXT_WORDS = re.compile(r"[a-zA-Z0-9]+|[^ \t\n\v\f\r]")


class _StringRanks:
    def __init__(self, ranks: dict[tuple[str, str], int]):
        self.ranks = ranks

    def __call__(self, a, b):
        return self.ranks.get((a, b))

    def merge(self, a, b):
        return a + b


class HuggingfaceTxtTokenizer(MnnTokenizer):
    def __init__(self, path, specials, prefix, vocab: list[str], merges: list[str]):
        super().__init__(path, specials, prefix)
        self.vocab = vocab
        self.ids = {}
        for i, t in enumerate(vocab):
            self.ids.setdefault(t, i)
        ranks = {}
        for rank, line in enumerate(merges):
            a, sep, b = line.partition(" ")
            if sep:
                ranks.setdefault((a, b), rank)
        self.ranks = _StringRanks(ranks)

    def decode_id(self, token_id):
        if not 0 <= token_id < len(self.vocab):
            return b""
        return bytes(CHAR_BYTES[c] for c in self.vocab[token_id] if c in CHAR_BYTES)

    def encode_text(self, data):
        out = []
        for match in _HF_TXT_PATTERN.finditer(data):
            word = [BYTE_CHARS[b] for b in match.group()]
            for piece in bpe_merge(word, self.ranks):
                if piece not in self.ids:
                    raise TokenizerFileError(f"{self.path}: the vocabulary has no token {piece!r} (a BPE merge result)")
                out.append(self.ids[piece])
        return out


def load_mnn_tokenizer(path: str | Path) -> MnnTokenizer:
    """Read `tokenizer.txt` or `tokenizer.mtok`; a file that does not parse raises TokenizerFileError naming it."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise TokenizerFileError(f"{path}: cannot read the tokenizer ({err.strerror or err})") from None
    try:
        return _parse(path, data)
    except TokenizerFileError:
        raise
    except (ValueError, IndexError, KeyError, struct.error, UnicodeDecodeError) as err:
        raise TokenizerFileError(f"{path}: not a readable MNN tokenizer file ({type(err).__name__}: {err})") from None


def _parse(path: Path, data: bytes) -> MnnTokenizer:
    ends = []
    for _ in range(3):
        ends.append(data.index(b"\n", ends[-1] + 1 if ends else 0))
    magic, kind = (int(x) for x in data[: ends[0]].split()[:2])
    if magic != MAGIC:
        raise TokenizerFileError(f"{path}: not an MNN tokenizer file (magic {magic}, expected {MAGIC})")
    counts = [int(x) for x in data[ends[0] + 1 : ends[1]].split()]
    listed = [int(x) for x in data[ends[1] + 1 : ends[2]].split()]
    specials = listed[: counts[0]]
    prefix = listed[counts[0] + counts[1] : counts[0] + counts[1] + counts[2]]
    body = data[ends[2] + 1 :]
    if kind == PIPELINE:
        from sanaedit.formats.mnn_tokenizer_pipeline import parse_pipeline

        return parse_pipeline(path, specials, prefix, body)
    lines = body.split(b"\n")
    if kind in (TIKTOKEN, BERT):
        count = int(lines[0])
        tokens = [base64.b64decode(t) for t in lines[1 : 1 + count]]
        return (TiktokenTokenizer if kind == TIKTOKEN else BertTxtTokenizer)(path, specials, prefix, tokens)
    if kind == HUGGINGFACE:
        n_vocab, n_merges = (int(x) for x in lines[0].split())
        vocab = [t.decode("utf-8") for t in lines[1 : 1 + n_vocab]]
        merges = [m.decode("utf-8") for m in lines[1 + n_vocab : 1 + n_vocab + n_merges]]
        if len(vocab) != n_vocab:
            raise TokenizerFileError(f"{path}: truncated ({len(vocab)} of {n_vocab} vocabulary lines)")
        return HuggingfaceTxtTokenizer(path, specials, prefix, vocab, merges)
    names = {0: "SentencePiece"}
    raise TokenizerFileError(
        f"{path}: tokenizer type {kind} ({names.get(kind, 'unknown')}) is not supported: types 1 to 4 are read"
    )
