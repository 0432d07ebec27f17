"""CIRAL, the cross-lingual test collection with English queries and passages in Hausa, Somali,
Swahili and Yoruba (Adeyemi et al., SIGIR 2024): where its files are on the Hugging Face hub,
fetching them into the Hugging Face cache on first use (or reading a local copy in the same
layout), and each language's bitext, fetched and held out the same way. The language configs
share `configs/ciral.py`; `optical_jax.data.inputs` turns their `ciral` section into these files.

The two dataset repositories (file names as in CIRAL's own loading script and Anserini's copy):

  CIRAL/ciral         ciral-{language}/topics/topics.ciral-v1.0-{code}-{split}.tsv  qid<TAB>query
                      ciral-{language}/qrels/qrels.ciral-v1.0-{code}-{split}.tsv    TREC qrels
                      splits dev, test-a, test-b; test-a-pools: qrels only (test-a's topics)
  CIRAL/ciral-corpus  passages-v1.0/{language}_passages.jsonl  {"docid", "title", "text", "url"}

A passage is its title and text, as CIRAL's BM25 baselines index it (Anserini's
MrTyDiCollection: title + newline + text); `evaluation.io.read_corpus` joins them.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import re
from pathlib import Path

from optical_jax.files.hub import hub_offline
from optical_jax.files.layout import CacheDir

LANGUAGES = {"hausa": "ha", "somali": "so", "swahili": "sw", "yoruba": "yo"}
SPLITS = ("dev", "test-a", "test-a-pools", "test-b")
DEFAULT_SPLITS = "dev,test-a,test-b"
TOPICS_REPO = "CIRAL/ciral"
CORPUS_REPO = "CIRAL/ciral-corpus"
# config.ciral.local_dir holds each repository under its own name, in its hub layout.
LOCAL_FOLDERS = {TOPICS_REPO: "ciral", CORPUS_REPO: "ciral-corpus"}

# English-X bitext per language: parquet on the hub, which `datasets` >= 4 reads without a
# loading script; we read the shards with pyarrow. `files` selects the training shards; one
# pair in `rate` is held out, so that ~1,000 are found well within the corpus.
BITEXTS = {
    # quickmt's deduplicated, filtered so-en training corpus (2.9M pairs; columns so, en, sco).
    "somali": dict(source="quickmt/quickmt-train.so-en", files="data/train-*.parquet",
                   student="so", teacher="en", rate=1000),
    # CCMatrix mined pairs as sentence-transformers repackaged them (english, non_english).
    "swahili": dict(source="sentence-transformers/parallel-sentences-ccmatrix",
                    files="en-sw/train-*.parquet", student="non_english", teacher="english",
                    rate=1000),
    "hausa": dict(source="sentence-transformers/parallel-sentences-ccmatrix",
                  files="en-ha/train-*.parquet", student="non_english", teacher="english",
                  rate=1000),
    # CCMatrix has no Yoruba; OPUS-100's en-yo pairs (a `translation` struct column), a small
    # corpus: a higher held-out rate.
    "yoruba": dict(source="Helsinki-NLP/opus-100", files="en-yo/*train*.parquet",
                   student="translation.yo", teacher="translation.en", rate=10),
}


def topics_file(language: str, split: str) -> str:
  """A topics file's path in CIRAL/ciral (test-a-pools judges test-a's topics)."""
  split = "test-a" if split == "test-a-pools" else split
  return f"ciral-{language}/topics/topics.ciral-v1.0-{LANGUAGES[language]}-{split}.tsv"


def qrels_file(language: str, split: str) -> str:
  return f"ciral-{language}/qrels/qrels.ciral-v1.0-{LANGUAGES[language]}-{split}.tsv"


def corpus_file(language: str) -> str:
  """The passages' path in CIRAL/ciral-corpus."""
  return f"passages-v1.0/{language}_passages.jsonl"


def _hub(function: str, repo_id: str, what: str, include: str, instead: str, *,
         revision: str = "", **kwargs) -> Path:
  """`huggingface_hub.<function>` of a dataset repository at `revision` (a commit; "": the
  default branch; its own progress bars; offline, the cache only), failing as one line that
  says what to download, how, and where it goes."""
  import huggingface_hub
  offline = hub_offline()
  try:
    return Path(getattr(huggingface_hub, function)(repo_id=repo_id, repo_type="dataset",
                                                    revision=revision or None,
                                                    local_files_only=offline, **kwargs))
  except Exception as e:  # huggingface_hub raises several types for "not here, not reachable"
    reason = (str(e).strip().splitlines() or [""])[0][:200]
    state = ("HF_HUB_OFFLINE=1 and it is not in the cache" if offline else
             f"the hub could not provide it ({type(e).__name__}: {reason})")
    cache = huggingface_hub.constants.HF_HUB_CACHE
    at = f" --revision {revision}" if revision else ""
    raise FileNotFoundError(
        f"{what}: {state}; where there is internet run `hf download {repo_id} --repo-type "
        f"dataset{at} --include '{include}'` (it goes to the Hugging Face cache {cache}), "
        f"{instead}") from None


def _local(local_dir: str, repo_id: str, relative: str) -> Path:
  path = Path(local_dir).expanduser() / LOCAL_FOLDERS[repo_id] / relative
  if not path.is_file():
    raise FileNotFoundError(f"{path} does not exist: config.ciral.local_dir must hold {repo_id}'s "
                            f"files in its hub layout, here {relative} under "
                            f"{Path(local_dir).expanduser() / LOCAL_FOLDERS[repo_id]}")
  return path


def collection_path(language: str, split: str, kind: str, local_dir: str = "",
                    revision: str = "") -> Path:
  """The local path of CIRAL's `kind` ("topics" or "qrels") of `split`: under `local_dir`, or
  in the Hugging Face cache at `revision` of CIRAL/ciral (all of the language's topics and
  qrels come in one download)."""
  if language not in LANGUAGES or split not in SPLITS or kind not in ("topics", "qrels"):
    raise ValueError(f"no CIRAL {kind} for {language!r} {split!r}: languages "
                     f"{', '.join(LANGUAGES)}, splits {', '.join(SPLITS)}")
  relative = topics_file(language, split) if kind == "topics" else qrels_file(language, split)
  if local_dir:
    return _local(local_dir, TOPICS_REPO, relative)
  patterns = [f"ciral-{language}/topics/*", f"ciral-{language}/qrels/*"]
  snapshot = _hub("snapshot_download", TOPICS_REPO, f"CIRAL's {language} topics and qrels",
                  f"ciral-{language}/*", "or copy the repository into config.ciral.local_dir/"
                  f"{LOCAL_FOLDERS[TOPICS_REPO]}", revision=revision, allow_patterns=patterns)
  path = snapshot / relative
  if not path.is_file():
    raise FileNotFoundError(f"{TOPICS_REPO} has no {relative} (in {snapshot})")
  return path


def corpus_path(language: str, local_dir: str = "", revision: str = "") -> Path:
  """The local path of CIRAL's passages of `language` (JSONL, about 1 GB for Somali), at
  `revision` of CIRAL/ciral-corpus."""
  if language not in LANGUAGES:
    raise ValueError(f"no CIRAL corpus for {language!r}: languages {', '.join(LANGUAGES)}")
  relative = corpus_file(language)
  if local_dir:
    return _local(local_dir, CORPUS_REPO, relative)
  return _hub("hf_hub_download", CORPUS_REPO, f"CIRAL's {language} passages", relative,
              f"or copy the repository into config.ciral.local_dir/{LOCAL_FOLDERS[CORPUS_REPO]}",
              revision=revision, filename=relative)


def looks_local(source: str) -> bool:
  """Whether a bitext source is a local file or directory, not a hub dataset id."""
  return (source.startswith(("/", ".", "~")) or Path(source).expanduser().exists()
          or source.endswith((".parquet", ".tsv", ".jsonl", ".json", ".txt")))


def bitext_files(source: str, files: str, revision: str = "") -> tuple[list[Path], dict]:
  """The files of a bitext and what they are: `source` is a local parquet, TSV or JSONL file,
  a local directory (its files matching the glob `files`), or a hub dataset id (its files
  matching `files` at `revision`, fetched into the Hugging Face cache)."""
  if looks_local(source):
    path = Path(source).expanduser()
    if not path.exists():
      raise FileNotFoundError(f"config.ciral.bitext: {path} does not exist")
    found = [path] if path.is_file() else sorted(
        p for p in path.rglob("*") if p.is_file() and fnmatch.fnmatch(
            p.relative_to(path).as_posix(), files))
    stamp = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in found]
    info = {"name": str(path), "files": [s[0] for s in stamp], "stamp": stamp}
  else:
    snapshot = _hub("snapshot_download", source, f"the bitext {source}", files,
                    "or point config.ciral.bitext at a local parquet, TSV or JSONL file",
                    revision=revision, allow_patterns=[files])
    found = sorted(p for p in snapshot.rglob("*") if p.is_file() and fnmatch.fnmatch(
        p.relative_to(snapshot).as_posix(), files))
    info = {"name": source, "files": files, "revision": snapshot.name}
  if not found:
    raise FileNotFoundError(f"config.ciral.bitext: no file of {source} matches "
                            f"config.ciral.bitext_files {files!r}")
  return found, info


def build_bitext(source: str, *, student: str, teacher: str, files: str, limit: int,
                 heldout: int, rate: int, max_chars: int, cache_dir: str | Path,
                 progress: bool = True, revision: str = "") -> Path:
  """The directory of `data.heldout.build_heldout` for this bitext (a hub dataset's at `revision`)
  and these settings, built on first use into `cache_dir/bitext` (later calls, offline too,
  only read it)."""
  from optical_jax.data.bitext import iter_raw_pairs
  from optical_jax.data.heldout import HELDOUT_VERSION, build_heldout
  settings = dict(source=source, student=student, teacher=teacher, files=files, limit=limit,
                  heldout=heldout, rate=rate, max_chars=max_chars,
                  version=HELDOUT_VERSION)
  if looks_local(source):  # a changed local file is a different bitext
    settings["stamp"] = bitext_files(source, files)[1]["stamp"]
  elif revision:  # another commit of the dataset is a different bitext
    settings["revision"] = revision
  key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
  slug = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(source).name if looks_local(source)
                else source.replace("/", "--")).strip("-")
  directory = CacheDir(cache_dir).bitext / f"{slug}-{key}"
  if not (directory / "manifest.json").is_file():
    paths, info = bitext_files(source, files, revision)
    build_heldout(directory, lambda: iter_raw_pairs(paths, (student, teacher)), limit=limit,
                  heldout=heldout, rate=rate, max_chars=max_chars, source=info,
                  progress=progress)
  return directory
