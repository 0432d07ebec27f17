"""Content fingerprints of files and checkpoint directories, for cache keys that can never
match stale content: a file's digest is its bytes' hash, remembered per (path, size, mtime in
nanoseconds, inode), so a file is hashed once per version however often it is keyed."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from optical_jax.files.cache_files import sweep_temporaries, temporary, writing
from optical_jax.files.layout import fingerprint_memo
from optical_jax.files.textfiles import DataFormatError

# Files of a checkpoint directory that decide its vectors: weights, config, tokenizer.
CHECKPOINT_FILES = ("*.safetensors", "*.bin", "*.msgpack", "config.json", "tokenizer.json",
                    "tokenizer_config.json", "vocab.txt", "sentencepiece.bpe.model",
                    "special_tokens_map.json", "modules.json", "1_Pooling/config.json",
                    "config_sentence_transformers.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt",
                   "sentencepiece.bpe.model", "special_tokens_map.json")
_MEMO: dict[str, str] = {}  # this process's digests by file version


def file_version(path: str | os.PathLike) -> str:
  """What changes whenever the file may have: resolved path, size, mtime (ns), inode."""
  path = Path(path)
  stat = path.stat()
  return f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{stat.st_ino}"


def file_digest(path: str | os.PathLike, *, memo_dir: str | os.PathLike | None = None,
                algorithm: str = "blake2b") -> str:
  """The blake2b digest of `path`'s bytes (hex, 32 characters; `algorithm="sha256"`: the
  SHA-256 digest a result records, which anyone can check with `sha256sum`), hashed once per
  file version. With `memo_dir`, digests are also remembered on disk there
  (`fingerprints.json`), so other runs do not hash again. A file written to while it is read
  raises `DataFormatError`."""
  path = Path(path)
  if not path.is_file():
    raise DataFormatError(f"{path}: no such file")
  stamp = file_version(path)
  version = stamp if algorithm == "blake2b" else f"{algorithm}:{stamp}"
  if version in _MEMO:
    return _MEMO[version]
  memo = fingerprint_memo(memo_dir) if memo_dir is not None else None
  stored = _read_memo(memo) if memo is not None else {}
  if isinstance(stored.get(version), str):
    _MEMO[version] = stored[version]
    return stored[version]
  digest = hashlib.blake2b(digest_size=16) if algorithm == "blake2b" else hashlib.new(algorithm)
  with open(path, "rb") as f:
    while block := f.read(1 << 22):
      digest.update(block)
  if file_version(path) != stamp:  # written to while it was read: nothing is trusted
    raise DataFormatError(f"{path}: changed while it was being read; run again once it is "
                          "complete")
  _MEMO[version] = value = digest.hexdigest()
  if memo is not None:
    stored[version] = value
    try:  # a read-only cache only costs a hash next time
      memo.parent.mkdir(parents=True, exist_ok=True)
      sweep_temporaries(memo.parent, of=memo.name)  # the cache's top: ours only
      tmp = temporary(memo)
      with writing(memo, "fingerprint memo", cleanup=[tmp]):
        tmp.write_text(json.dumps(stored))
      os.replace(tmp, memo)
    except OSError:
      pass
  return value


def file_fingerprint(path: str | os.PathLike, memo_dir: str | os.PathLike | None = None) -> str:
  """`SIZE-DIGEST` of the file's bytes (`file_digest`): the same for the same content wherever
  it lies, another for an edit in place."""
  return f"{Path(path).stat().st_size}-{file_digest(path, memo_dir=memo_dir)}"


def forget() -> None:
  """Drops this process's remembered digests (tests that rewrite files within a second)."""
  _MEMO.clear()


def _read_memo(path: Path) -> dict:
  try:
    value = json.loads(path.read_text(encoding="utf-8"))
  except (OSError, ValueError):
    return {}  # a broken memo only costs a hash
  return value if isinstance(value, dict) else {}


def checkpoint_digest(directory: str | os.PathLike, *, files=CHECKPOINT_FILES,
                      memo_dir: str | os.PathLike | None = None) -> str:
  """A digest of the content of a checkpoint directory's weights, config and tokenizer files
  (`files`, glob patterns; `TOKENIZER_FILES` for its tokenizer alone): the same weights
  re-downloaded or copied elsewhere give the same one, other weights at the same path
  another."""
  directory = Path(directory)
  files = sorted({p for pattern in files for p in directory.glob(pattern) if p.is_file()})
  h = hashlib.blake2b(digest_size=16)
  for path in files:
    h.update(f"{path.relative_to(directory)}={file_digest(path, memo_dir=memo_dir)}\n".encode())
  return h.hexdigest()
