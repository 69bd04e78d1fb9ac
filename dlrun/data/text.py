"""Text from a table's column: `data=csv data.text=COL`.

Each row's text becomes a sequence of token ids for the sequence models (which embed them) by a
tokenizer of Hugging Face's `tokenizers` library, trained on the training split's texts only:
`data.tokenizer=word` (the default: lower-cased words, the `data.vocab_size` most frequent),
`char` (one token per character) or `wordpiece` (words split into learned pieces, which also
reads words it never saw; the library trains it differently from one run to the next,
huggingface/tokenizers#1794, so two runs of the same config may differ). Id 0 pads, id 1 stands for any
token the training texts never had. Texts longer than `data.text_max_len` tokens keep their first
ones; shorter ones are padded and carry their lengths. The trained tokenizer is saved with the
run (its own JSON), so dlrun-predict reads new text the same way. Models that take flat input
(mlp, random_forest, xgboost) read each text as a bag of tokens: how often each token occurs.
"""

from __future__ import annotations

import numpy as np

from dlrun.errors import UserError

PAD, UNK = "[PAD]", "[UNK]"  # ids 0 and 1


class TextEncoder:
    """`RawData.encode` for a text column: a tokenizer trained on the training rows' texts, then
    every text as padded token ids (N, T) with its length."""

    kind = "text"

    def __init__(self, column: str, how: str, vocab_size: int, max_len: int):
        self.column, self.how, self.vocab_size, self.max_len = column, how, vocab_size, max_len
        self.tokenizer_ = None
        self.lengths_ = None

    @property
    def feature_names(self):
        return None

    def __call__(self, texts, train_rows: np.ndarray) -> np.ndarray:
        self.tokenizer_ = train_tokenizer(list(texts.iloc[train_rows]), self.how, self.vocab_size)
        x, self.lengths_ = self.ids(texts)
        return x

    def refitted(self, fresh) -> TextEncoder:
        return self

    def apply(self, texts) -> np.ndarray:
        """Every text as token ids of the tokenizer already trained (lengths in `lengths_`)."""
        x, self.lengths_ = self.ids(texts)
        return x

    def ids(self, texts) -> tuple[np.ndarray, np.ndarray]:
        """Token ids (N, max_len), padded with 0, and each text's length (at least 1: an empty
        text is one unknown token)."""
        encoded = self.tokenizer_.encode_batch([str(t) for t in texts])
        x = np.zeros((len(encoded), self.max_len), dtype=np.int64)
        lengths = np.ones(len(encoded), dtype=np.int64)
        for row, tokens in enumerate(encoded):
            ids = tokens.ids[: self.max_len] or [1]
            x[row, : len(ids)] = ids
            lengths[row] = len(ids)
        return x, lengths

    @property
    def vocabulary(self) -> int:
        return self.tokenizer_.get_vocab_size()

    def transform(self, frame, shown: str):
        """New rows' texts: (token ids, lengths, no ids)."""
        if self.column not in frame.columns:
            raise UserError(f"input: {shown} lacks the text column '{self.column}' (data.text).")
        x, lengths = self.ids(texts_of(frame[self.column], self.column, shown, new=True))
        return x, lengths, None

    def describe(self) -> dict:
        return {
            "kind": "text",
            "column": self.column,
            "tokenizer": self.how,
            "vocab_size": self.vocabulary,
            "max_len": self.max_len,
        }

    def save_files(self, folder) -> None:
        from dlrun.checkpoints import atomic_write

        text = self.tokenizer_.to_str(pretty=True)
        atomic_write(folder / "tokenizer.json", lambda f: f.write(text), mode="w")

    @classmethod
    def restore(cls, described: dict, folder) -> TextEncoder:
        from tokenizers import Tokenizer

        path = folder / "tokenizer.json"
        encoder = cls(
            described["column"],
            described["tokenizer"],
            described["vocab_size"],
            described["max_len"],
        )
        try:
            encoder.tokenizer_ = Tokenizer.from_file(str(path))
        except Exception as ex:  # missing, truncated or not a tokenizer's JSON
            raise UserError(f"{path} cannot be read as the run's tokenizer: {ex}") from None
        return encoder


def train_tokenizer(texts: list[str], how: str, vocab_size: int):
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers

    if how == "char":
        tokenizer = Tokenizer(models.WordLevel(unk_token=UNK))
        tokenizer.normalizer = normalizers.NFKC()
        tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
        trainer = trainers.WordLevelTrainer(special_tokens=[PAD, UNK])
    elif how == "word":  # deterministic: the most frequent words, ties by the words themselves
        tokenizer = Tokenizer(models.WordLevel(unk_token=UNK))
        tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        trainer = trainers.WordLevelTrainer(vocab_size=vocab_size, special_tokens=[PAD, UNK])
    else:
        tokenizer = Tokenizer(models.WordPiece(unk_token=UNK))
        tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=[PAD, UNK])
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


def texts_of(column, name: str, shown, new: bool = False):
    """The column's texts, with a clear message for one that cannot be a text feature."""
    missing = column.isna().to_numpy()
    key = "input" if new else "data.text"
    if missing.all():
        raise UserError(
            f"{key}: the text column '{name}' of {shown} is empty (no text in any row)."
        )
    texts = column.fillna("").astype(str)
    if not new and texts.str.strip().eq("").all():
        raise UserError(f"data.text: the text column '{name}' of {shown} holds only blank texts.")
    return texts


def check_tokens(x: np.ndarray, lengths: np.ndarray, name: str, shown) -> None:
    """A text column whose training texts all come to one token cannot tell samples apart."""
    used = np.unique(x[x > 0])
    if len(used) < 2:
        raise UserError(
            f"data.text: the text column '{name}' of {shown} has a single distinct token "
            f"({'unknown' if len(used) == 0 else int(used[0])}) in all its texts; a model cannot "
            "learn from it. Check the column, or try data.tokenizer=char."
        )


def bag_of_tokens(x: np.ndarray, vocab_size: int) -> np.ndarray:
    """Token ids (N, T) as counts (N, vocab_size) of each token (padding not counted)."""
    counts = np.zeros((len(x), vocab_size), dtype=np.float32)
    rows = np.repeat(np.arange(len(x)), x.shape[1])
    tokens = x.reshape(-1)
    real = tokens > 0
    np.add.at(counts, (rows[real], tokens[real]), 1.0)
    return counts
