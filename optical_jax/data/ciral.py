"""CIRAL, the cross-lingual test collection with English queries and passages in Hausa, Somali,
Swahili and Yoruba (Adeyemi et al., SIGIR 2024), as the language configs use it: where its files
are on the Hugging Face hub, fetching them into the Hugging Face cache on first use (or reading
a local copy in the same layout), bitext fetched and held out the same way, the asset
references configs write for both, and `ciral_config`, the one config all four languages share.

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

from optical_jax.models.hf_checkpoint import hub_offline

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


def _hub(function: str, repo_id: str, what: str, include: str, instead: str, **kwargs) -> Path:
  """`huggingface_hub.<function>` of a dataset repository (its own progress bars; offline,
  the cache only), failing as one line that says what to download, how, and where it goes."""
  import huggingface_hub
  offline = hub_offline()
  try:
    return Path(getattr(huggingface_hub, function)(repo_id=repo_id, repo_type="dataset",
                                                    local_files_only=offline, **kwargs))
  except Exception as e:  # huggingface_hub raises several types for "not here, not reachable"
    reason = (str(e).strip().splitlines() or [""])[0][:200]
    state = ("HF_HUB_OFFLINE=1 and it is not in the cache" if offline else
             f"the hub could not provide it ({type(e).__name__}: {reason})")
    cache = huggingface_hub.constants.HF_HUB_CACHE
    raise FileNotFoundError(
        f"{what}: {state}; where there is internet run `hf download {repo_id} --repo-type "
        f"dataset --include '{include}'` (it goes to the Hugging Face cache {cache}), {instead}"
    ) from None


def _local(local_dir: str, repo_id: str, relative: str) -> Path:
  path = Path(local_dir).expanduser() / LOCAL_FOLDERS[repo_id] / relative
  if not path.is_file():
    raise FileNotFoundError(f"{path} does not exist: config.ciral.local_dir must hold {repo_id}'s "
                            f"files in its hub layout, here {relative} under "
                            f"{Path(local_dir).expanduser() / LOCAL_FOLDERS[repo_id]}")
  return path


def collection_path(language: str, split: str, kind: str, local_dir: str = "") -> Path:
  """The local path of CIRAL's `kind` ("topics" or "qrels") of `split`: under `local_dir`, or
  in the Hugging Face cache (all of the language's topics and qrels come in one download)."""
  if language not in LANGUAGES or split not in SPLITS or kind not in ("topics", "qrels"):
    raise ValueError(f"no CIRAL {kind} for {language!r} {split!r}: languages "
                     f"{', '.join(LANGUAGES)}, splits {', '.join(SPLITS)}")
  relative = topics_file(language, split) if kind == "topics" else qrels_file(language, split)
  if local_dir:
    return _local(local_dir, TOPICS_REPO, relative)
  patterns = [f"ciral-{language}/topics/*", f"ciral-{language}/qrels/*"]
  snapshot = _hub("snapshot_download", TOPICS_REPO, f"CIRAL's {language} topics and qrels",
                  f"ciral-{language}/*", "or copy the repository into config.ciral.local_dir/"
                  f"{LOCAL_FOLDERS[TOPICS_REPO]}", allow_patterns=patterns)
  path = snapshot / relative
  if not path.is_file():
    raise FileNotFoundError(f"{TOPICS_REPO} has no {relative} (in {snapshot})")
  return path


def corpus_path(language: str, local_dir: str = "") -> Path:
  """The local path of CIRAL's passages of `language` (JSONL, about 1 GB for Somali)."""
  if language not in LANGUAGES:
    raise ValueError(f"no CIRAL corpus for {language!r}: languages {', '.join(LANGUAGES)}")
  relative = corpus_file(language)
  if local_dir:
    return _local(local_dir, CORPUS_REPO, relative)
  return _hub("hf_hub_download", CORPUS_REPO, f"CIRAL's {language} passages", relative,
              f"or copy the repository into config.ciral.local_dir/{LOCAL_FOLDERS[CORPUS_REPO]}",
              filename=relative)


def _looks_local(source: str) -> bool:
  return (source.startswith(("/", ".", "~")) or Path(source).expanduser().exists()
          or source.endswith((".parquet", ".tsv", ".jsonl", ".json", ".txt")))


def bitext_files(source: str, files: str) -> tuple[list[Path], dict]:
  """The files of a bitext and what they are: `source` is a local parquet, TSV or JSONL file,
  a local directory (its files matching the glob `files`), or a hub dataset id (its files
  matching `files`, fetched into the Hugging Face cache)."""
  if _looks_local(source):
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
                    allow_patterns=[files])
    found = sorted(p for p in snapshot.rglob("*") if p.is_file() and fnmatch.fnmatch(
        p.relative_to(snapshot).as_posix(), files))
    info = {"name": source, "files": files, "revision": snapshot.name}
  if not found:
    raise FileNotFoundError(f"config.ciral.bitext: no file of {source} matches "
                            f"config.ciral.bitext_files {files!r}")
  return found, info


def build_bitext(source: str, *, student: str, teacher: str, files: str, limit: int,
                 heldout: int, rate: int, max_chars: int, cache_dir: str | Path,
                 progress: bool = True) -> Path:
  """The directory of `bitext.build_heldout` for this bitext and these settings, built on first
  use into `cache_dir/bitext` (later calls, offline too, only read it)."""
  from optical_jax.data import bitext
  settings = dict(source=source, student=student, teacher=teacher, files=files, limit=limit,
                  heldout=heldout, rate=rate, max_chars=max_chars,
                  version=bitext.HELDOUT_VERSION)
  if _looks_local(source):  # a changed local file is a different bitext
    settings["stamp"] = bitext_files(source, files)[1]["stamp"]
  key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
  slug = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(source).name if _looks_local(source)
                else source.replace("/", "--")).strip("-")
  directory = Path(cache_dir).expanduser() / "bitext" / f"{slug}-{key}"
  if not (directory / "manifest.json").is_file():
    paths, info = bitext_files(source, files)
    bitext.build_heldout(directory, lambda: bitext.iter_raw_pairs(paths, (student, teacher)),
                         limit=limit, heldout=heldout, rate=rate, max_chars=max_chars,
                         source=info, progress=progress)
  return directory


# Asset references, as configs write them and `optical_jax.assets.resolve` resolves them. The
# last parameter takes the rest of the string, so it may hold any path.
#   ciral:LANGUAGE/SPLIT/(topics|qrels)?built=SPLITS&splits=SPLITS&local_dir=DIR
#   ciral:LANGUAGE/corpus?local_dir=DIR
#   bitext:PART?student=F&teacher=F&files=GLOB&limit=N&heldout=N&rate=N&max_chars=N&source=S
# with PART one of train.tsv, dev/topics.tsv, dev/corpus.tsv, dev/qrels.txt.
BITEXT_PARTS = ("train.tsv", "dev/topics.tsv", "dev/corpus.tsv", "dev/qrels.txt")


def _parameters(query: str, last: str) -> dict[str, str]:
  if query.startswith(f"{last}="):
    head, rest = "", query[len(last) + 1:]
  else:
    head, sep, rest = query.partition(f"&{last}=")
    if not sep:
      raise ValueError(f"missing {last}=")
  params = dict(p.split("=", 1) for p in head.split("&") if p)
  params[last] = rest
  return params


def resolve_ciral(reference: str) -> Path:
  """The path of a `ciral:` reference (without its prefix)."""
  from optical_jax.config import ConfigError
  what, _, query = reference.partition("?")
  try:
    params = _parameters(query, "local_dir")
  except ValueError as e:
    raise ConfigError(f"ciral:{reference}: {e}") from None
  parts = what.split("/")
  if parts[1:] == ["corpus"]:
    return corpus_path(parts[0], params["local_dir"])
  if len(parts) != 3:
    raise ConfigError(f"ciral:{reference}: expected LANGUAGE/SPLIT/(topics|qrels) or "
                      "LANGUAGE/corpus")
  if params.get("splits", params.get("built")) != params.get("built"):
    code = LANGUAGES.get(parts[0], parts[0])
    raise ConfigError(f"config.ciral.split {params['splits']!r} differs from the splits the "
                      f"config file built ({params['built']!r}); splits are chosen when it "
                      f"loads: --config=configs/{code}.py:{params['splits']}")
  try:
    return collection_path(parts[0], parts[1], parts[2], params["local_dir"])
  except ValueError as e:
    raise ConfigError(f"ciral:{reference}: {e}") from None


def resolve_bitext(reference: str, cache_dir: str | Path) -> Path:
  """The path of a `bitext:` reference (without its prefix), building the bitext first."""
  from optical_jax.config import ConfigError
  part, _, query = reference.partition("?")
  try:
    params = _parameters(query, "source")
    numbers = {k: int(params[k]) for k in ("limit", "heldout", "rate", "max_chars")}
    fields = {k: params[k] for k in ("student", "teacher", "files")}
  except (KeyError, ValueError) as e:
    raise ConfigError(f"bitext:{reference}: bad or missing parameter ({e})") from None
  if part not in BITEXT_PARTS:
    raise ConfigError(f"bitext:{reference}: the part must be one of {', '.join(BITEXT_PARTS)}")
  if numbers["rate"] < 1 or min(numbers.values()) < 0:
    raise ConfigError(f"bitext:{reference}: config.ciral.heldout_rate must be >= 1 and the "
                      "other numbers >= 0")
  return build_bitext(params["source"], cache_dir=cache_dir, **fields, **numbers) / part


def ciral_reference(c, language: str, split: str | None, kind: str):
  """A `ciral:` reference that follows later changes of `c.ciral` (command-line overrides)."""
  if split is None:
    return f"ciral:{language}/corpus?local_dir=" + c.ciral.get_ref("local_dir")
  return (f"ciral:{language}/{split}/{kind}?built={c.ciral.split}&splits="
          + c.ciral.get_ref("split") + "&local_dir=" + c.ciral.get_ref("local_dir"))


def bitext_reference(c, part: str):
  """A `bitext:` reference that follows later changes of `c.ciral` and `c.data`."""
  return (f"bitext:{part}?student=" + c.data.get_ref("student_field")
          + "&teacher=" + c.data.get_ref("teacher_field")
          + "&files=" + c.ciral.get_ref("bitext_files")
          + "&limit=" + c.data.get_ref("limit").to_str()
          + "&heldout=" + c.ciral.get_ref("heldout").to_str()
          + "&rate=" + c.ciral.get_ref("heldout_rate").to_str()
          + "&max_chars=" + c.ciral.get_ref("max_chars").to_str()
          + "&source=" + c.ciral.get_ref("bitext"))


def ciral_config(language: str, splits: str = ""):
  """The config of English-to-`language` CIRAL retrieval: the student learns `language` from
  bitext; dev MAP on held-out bitext pairs; the final table on CIRAL's `splits` (comma-
  separated, default dev, test-a and test-b)."""
  import ml_collections
  from optical_jax.config import base_config
  if language not in LANGUAGES:
    raise ValueError(f"CIRAL has no {language!r}; languages: {', '.join(LANGUAGES)}")
  splits = splits or DEFAULT_SPLITS
  for split in splits.split(","):
    if split not in SPLITS:
      raise ValueError(f"CIRAL has no split {split!r}; splits: {', '.join(SPLITS)}")
  code, text = LANGUAGES[language], BITEXTS[language]
  c = base_config()
  # Teacher: a strong small English retrieval model of the BERT family (BGE v1.5, CLS pooling,
  # 384 wide like the student, so no projection is needed; ahead of e5-small-v2 on MTEB
  # retrieval). Query and passage prefixes and pooling come from its own sentence-transformers
  # files.
  c.model.teacher = "BAAI/bge-small-en-v1.5"
  # Student: multilingual e5-small, already a retriever in ~100 languages, so distillation
  # starts from a retriever rather than a language model; its XLM-R vocabulary and
  # pretraining include Hausa, Somali and Swahili (not Yoruba, whose Latin script it still
  # tokenizes). It encodes the passages, which are in `language`.
  c.model.student = "intfloat/multilingual-e5-small"
  c.model.student_side = "document"
  c.model.dtype = "bfloat16"
  c.loss = "ot"

  c.ciral = ml_collections.ConfigDict()
  c.ciral.split = splits  # the splits of the final table; choose them as --config=FILE:SPLITS
  # A directory holding the two repositories in their hub layout (LOCAL/ciral/...,
  # LOCAL/ciral-corpus/...) instead of the download: mirrors and offline clusters.
  c.ciral.local_dir = ""
  # The bitext: a hub dataset id (parquet shards matching bitext_files) or a local parquet,
  # TSV or JSONL file or directory; its columns are data.student_field and data.teacher_field.
  c.ciral.bitext = text["source"]
  c.ciral.bitext_files = text["files"]
  c.ciral.heldout = 1000  # bitext pairs held out of training for dev MAP (at most this many)
  c.ciral.heldout_rate = text["rate"]  # one pair in this many is held out (by a text hash)
  c.ciral.max_chars = 300  # pairs with a longer side are dropped (about data.max_length tokens)

  c.data.student_field, c.data.teacher_field = text["student"], text["teacher"]
  c.data.limit = 2_000_000
  c.data.max_length = 64
  c.data.train_file = bitext_reference(c, "train.tsv")
  c.train.batch_size = 256
  c.train.num_train_steps = 20_000
  c.train.learning_rate = 5e-5
  c.train.warmup_steps = 1000
  c.train.eval_every_steps = 1000
  c.train.checkpoint_every_steps = 1000

  dev = f"bitext-{code}-en"
  collections = [dict(name=dev, topics=bitext_reference(c, "dev/topics.tsv"),
                      corpus=bitext_reference(c, "dev/corpus.tsv"),
                      qrels=bitext_reference(c, "dev/qrels.txt"),
                      query_encoder="student", doc_encoder="teacher")]
  for split in splits.split(","):
    collections.append(dict(
        name=f"ciral-{code}-{split}", topics=ciral_reference(c, language, split, "topics"),
        corpus=ciral_reference(c, language, None, "corpus"),
        qrels=ciral_reference(c, language, split, "qrels"),
        query_encoder="teacher", doc_encoder="student"))
  c.eval.collections = [ml_collections.ConfigDict(spec) for spec in collections]
  c.eval.dev_collection = dev
  c.eval.max_length = 256  # CIRAL passages are news paragraphs
  c.eval.k = 100  # CIRAL's measures: nDCG@20 and R@100 on the top 100
  return c
