"""Content fingerprints of files and checkpoint directories, for cache keys that can never
match stale content: a file's digest is its bytes' hash, remembered per (path, size, mtime in
nanoseconds, inode), so a file is hashed once per version however often it is keyed."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

# Files of a checkpoint directory that decide its vectors: weights, config, tokenizer.
CHECKPOINT_FILES = ("*.safetensors", "*.bin", "*.msgpack", "config.json", "tokenizer.json",
                    "tokenizer_config.json", "vocab.txt", "sentencepiece.bpe.model",
                    "special_tokens_map.json", "modules.json", "1_Pooling/config.json",
                    "config_sentence_transformers.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt",
                   "sentencepiece.bpe.model", "special_tokens_map.json")
_MEMO: dict[str, str] = {}  # this process's digests by file version


def _version(path: Path) -> str:
  stat = path.stat()
  return f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{stat.st_ino}"


def file_digest(path: str | os.PathLike, *, memo_dir: str | os.PathLike | None = None) -> str:
  """The blake2b digest of `path`'s bytes (hex, 32 characters). With `memo_dir`, digests are
  also remembered on disk there (`fingerprints.json`), so other runs do not hash again."""
  path = Path(path)
  version = _version(path)
  if version in _MEMO:
    return _MEMO[version]
  memo_path = Path(memo_dir).expanduser() / "fingerprints.json" if memo_dir else None
  stored = {}
  if memo_path is not None and memo_path.is_file():
    try:
      stored = json.loads(memo_path.read_text())
    except (OSError, ValueError):
      stored = {}  # a broken memo only costs a hash
    if isinstance(stored.get(version), str):
      _MEMO[version] = stored[version]
      return stored[version]
  digest = hashlib.blake2b(digest_size=16)
  with open(path, "rb") as f:
    while block := f.read(1 << 22):
      digest.update(block)
  _MEMO[version] = value = digest.hexdigest()
  if memo_path is not None and _version(path) == version:  # unchanged while it was read
    stored[version] = value
    try:
      memo_path.parent.mkdir(parents=True, exist_ok=True)
      tmp = memo_path.with_name(f"{memo_path.name}.tmp{os.getpid()}")
      tmp.write_text(json.dumps(stored))
      os.replace(tmp, memo_path)
    except OSError:
      pass  # a read-only cache: the digest is still right, only not remembered
  return value


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
