"""docs/configuration.md's reference is generated from the schema: up to date, and naming every
field of every group (the optional `ciral` and `demo` included), every record key and loss."""

from optical_jax.config import GROUPS, LOSS_TABLE, RECORDS
from optical_jax.config.reference import MARKER, document, reference
from tests.helpers import ROOT

DOC = ROOT / "docs" / "configuration.md"


def test_the_configuration_reference_is_up_to_date():
  text = DOC.read_text()
  assert MARKER in text
  assert text == document(text), (
      "docs/configuration.md is stale: python -m optical_jax.config.reference "
      "docs/configuration.md")


def test_every_field_appears_in_the_reference_with_its_doc():
  rows = {line.split("`")[1]: line for line in reference().splitlines()
          if line.startswith("| `")}
  declared = [(g.dotted(f), f) for g in GROUPS for f in g.fields] + [
      (f.name, f) for r in RECORDS for f in r.fields]
  missing = [name for name, f in declared
             if name not in rows or f.doc.replace("|", "\\|") not in rows[name]]
  assert not missing
  assert {"ciral.language", "ciral.bitext_revision", "demo.losses", "demo.tables",
          "query_encoder", "title"} <= rows.keys()
  assert set(LOSS_TABLE) <= rows.keys()
  assert "| `ciral.language` | required |" in rows["ciral.language"]


def test_the_guide_above_the_marker_is_kept_whole():
  guide = "# Mine\n\nHand-written.\n\n"
  assert document(guide).startswith(guide + MARKER)
  assert document(document(guide)) == document(guide)
