"""New WordPiece pieces for the student's language: learned from its texts, appended to the
student's tokenizer.

1. `learn_pieces`: a WordPiece vocabulary is trained (the `tokenizers` trainer, with the
   student tokenizer's own normaliser and pre-tokeniser) on the bitext's student side; the
   pieces not yet in the student's vocabulary are ranked by the tokens they save (uses x
   (old pieces per piece - 1)) and the first `count` kept.
2. `extend_tokenizer`: they are appended to the tokenizer's WordPiece vocabulary (ids
   `V, ..., V + count - 1`), so greedy longest-match uses them inside words.
3. `piece_ids`: the old pieces each new one used to be split into, which the new embedding
   rows start from (`embedding_init`).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, Mapping, Sequence


def wordpiece_spec(tokenizer: Any) -> dict:
  """The WordPiece model section of a fast tokenizer's JSON; ValueError for other models."""
  spec = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
  if spec.get("type") != "WordPiece":
    raise ValueError(f"vocabulary extension needs a WordPiece (BERT-family) tokenizer; this one "
                     f"is {spec.get('type')!r}")
  return spec


def wordpiece_split(piece: str, vocab: Mapping[str, int], *, prefix: str = "##",
                    unk: str = "[UNK]") -> list[str]:
  """Greedy longest-match WordPiece split of one word or piece over `vocab`.

  A piece starting with `prefix` is a word continuation and splits into continuation pieces.

  >>> wordpiece_split("ndipo", {"n": 0, "##di": 1, "##po": 2, "##dipo": 3})
  ['n', '##dipo']
  >>> wordpiece_split("##dipo", {"##di": 1, "##po": 2})
  ['##di', '##po']
  >>> wordpiece_split("xyz", {"x": 0})
  ['[UNK]']
  """
  continuation = piece.startswith(prefix)
  chars = piece[len(prefix):] if continuation else piece
  pieces, start = [], 0
  while start < len(chars):
    end = len(chars)
    while end > start:
      sub = (prefix if start > 0 or continuation else "") + chars[start:end]
      if sub in vocab:
        break
      end -= 1
    else:
      return [unk]
    pieces.append(sub)
    start = end
  return pieces


def word_counts(texts: Sequence[str], tokenizer: Any) -> Counter:
  """How often each pre-tokenised word (the tokenizer's normalisation: MiniLM lowercases)
  occurs in `texts`."""
  backend = tokenizer.backend_tokenizer
  counts = Counter()
  for text in texts:
    normalized = backend.normalizer.normalize_str(text) if backend.normalizer else text
    counts.update(w for w, _ in backend.pre_tokenizer.pre_tokenize_str(normalized))
  return counts


def learn_pieces(texts: Sequence[str], tokenizer: Any, *, count: int,
                 trained_vocab_size: int | None = None, min_frequency: int = 2) -> list[str]:
  """Up to `count` new WordPiece pieces for `texts`' language, most tokens saved first.

  A WordPiece vocabulary of `trained_vocab_size` (default `max(2 * count, 1000)`) is trained
  on `texts` with `tokenizer`'s normaliser and pre-tokeniser. Each piece not in `tokenizer`'s
  vocabulary scores (its uses when the training words are split with the learned
  vocabulary) x (the old pieces it splits into - 1); pieces that save nothing are dropped.
  Ties go to the piece that sorts first, so the result depends on `texts` only.

  Args:
    texts: student-language sentences.
    tokenizer: the student's transformers fast tokenizer (WordPiece).
    count: how many pieces to keep at most.
    trained_vocab_size: size of the learned vocabulary.
    min_frequency: the trainer's minimum pair frequency.

  Returns:
    The new pieces (`##` marks word continuations), best first.

  Example::

    learn_pieces(chichewa_sentences, minilm.tokenizer, count=3)  # ['ndipo', '##nse', 'kuti']
  """
  from tokenizers import Tokenizer, models, trainers
  spec = wordpiece_spec(tokenizer)
  prefix, unk = spec["continuing_subword_prefix"], spec["unk_token"]
  backend = tokenizer.backend_tokenizer
  learner = Tokenizer(models.WordPiece(unk_token=unk, continuing_subword_prefix=prefix))
  learner.normalizer = backend.normalizer
  learner.pre_tokenizer = backend.pre_tokenizer
  size = trained_vocab_size or max(2 * count, 1000)
  learner.train_from_iterator(list(texts), trainers.WordPieceTrainer(
      vocab_size=size, min_frequency=min_frequency, special_tokens=[unk],
      continuing_subword_prefix=prefix, show_progress=False))
  learned, old = learner.get_vocab(), tokenizer.get_vocab()
  uses = Counter()
  for word, freq in word_counts(texts, tokenizer).items():
    for piece in wordpiece_split(word, learned, prefix=prefix, unk=unk):
      if piece not in old and piece != unk:
        uses[piece] += freq
  saved = {p: n * (len(wordpiece_split(p, old, prefix=prefix, unk=unk)) - 1)
           for p, n in uses.items()}
  ranked = sorted((p for p, s in saved.items() if s > 0), key=lambda p: (-saved[p], p))
  return ranked[:count]


def extend_tokenizer(tokenizer: Any, pieces: Sequence[str], directory: str | Path) -> Any:
  """Writes `tokenizer` with `pieces` appended to its WordPiece vocabulary to `directory`
  (tokenizer.json, tokenizer_config.json, vocab.txt) and returns it loaded from there.

  The new pieces get ids `len(vocab), ..., len(vocab) + len(pieces) - 1`.

  Raises:
    ValueError: not a WordPiece tokenizer, its ids are not `0..V-1`, or a piece is already
      in the vocabulary.

  Example::

    new = extend_tokenizer(minilm.tokenizer, ["ndipo"], "/tmp/ny")
    new.tokenize("Ndipo")  # ['ndipo'] (was ['n', '##di', '##po'])
  """
  from transformers import AutoTokenizer
  wordpiece_spec(tokenizer)
  directory = Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  tokenizer.save_pretrained(str(directory))
  path = directory / "tokenizer.json"
  spec = json.loads(path.read_text(encoding="utf-8"))
  vocab = spec["model"]["vocab"]
  if sorted(vocab.values()) != list(range(len(vocab))):
    raise ValueError("the tokenizer's WordPiece ids are not 0..V-1")
  present = [p for p in pieces if p in vocab]
  if present or len(set(pieces)) != len(pieces):
    raise ValueError(f"pieces must be new and distinct; already there: {present[:5]}")
  for i, piece in enumerate(pieces):
    vocab[piece] = len(vocab)
  path.write_text(json.dumps(spec, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
  by_id = sorted(vocab, key=vocab.get)
  (directory / "vocab.txt").write_text("".join(f"{p}\n" for p in by_id), encoding="utf-8")
  extended = AutoTokenizer.from_pretrained(str(directory), trust_remote_code=False)
  if len(extended) != len(by_id):
    raise ValueError(f"{directory}: the extended tokenizer has {len(extended)} tokens, "
                     f"expected {len(by_id)}")
  return extended


def piece_ids(pieces: Sequence[str], vocab: Mapping[str, int], *, prefix: str = "##",
              unk: str = "[UNK]") -> list[list[int]]:
  """The old ids each new piece used to be split into.

  >>> piece_ids(["##dipo"], {"##di": 7, "##po": 9})
  [[7, 9]]
  """
  return [[vocab[p] for p in wordpiece_split(piece, vocab, prefix=prefix, unk=unk)]
          for piece in pieces]
