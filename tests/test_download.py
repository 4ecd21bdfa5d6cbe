"""`python data.py download` (make data), offline: a file:// mirror of the upstream repositories is built from
../shared/data (skipped without it), downloaded from, and corrupted or removed to check the errors."""
import os
import pathlib
import shutil
import urllib.parse
import urllib.request

import pytest

import data

SHARED = data.DEFAULT_DATA_DIR
pytestmark = pytest.mark.skipif(not all((SHARED / p).is_file() for p in data.FILES),
                                reason=f"{SHARED} (the reference copy of the data sets) is absent")


def mirror_of_upstream(root: pathlib.Path) -> str:
    """Copy ../shared/data into root as <repository>/<commit>/<path in the repository>, like GitHub's raw host;
    returns its file:// base URL."""
    base = root.as_uri()
    for p in data.FILES:
        where = pathlib.Path(urllib.request.url2pathname(urllib.parse.urlparse(data.source_url(p, base)).path))
        where.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SHARED / p, where)
    return base


def test_upstream_urls():
    assert data.source_url("e2e/devset.csv") == ("https://raw.githubusercontent.com/tuetschek/e2e-dataset/"
                                                 "ab0d967dd5729ce455ef14ba9ffafc456a335264/devset.csv")
    assert data.source_url("text2sql/atis.json") == ("https://raw.githubusercontent.com/jkkummerfeld/text2sql-data/"
                                                     "5050bad2309a93636ea4788d3660c9202bf11e0e/data/atis.json")
    assert data.source_url("dialogsum/dialogsum.dev.jsonl", "file:///m/") == (
        "file:///m/cylnlp/dialogsum/848cc8c05e0a04def79326539de827f1b28786a0/DialogSum_Data/dialogsum.dev.jsonl")


def test_download_from_a_mirror_equals_the_originals(tmp_path, capsys):
    base = mirror_of_upstream(tmp_path / "mirror")
    out = tmp_path / "out"
    data.main(["download", "--to", str(out), "--base-url", base])
    assert "--data-dir" in capsys.readouterr().out
    got = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert got == sorted(data.FILES)  # the layout of ../shared/data, and no temporary file left behind
    for p in data.FILES:
        assert (out / p).read_bytes() == (SHARED / p).read_bytes(), p
    assert data.load_task("e2e", "test", out) == data.load_task("e2e", "test", SHARED)
    # A second run keeps the checked files: it needs no source at all.
    shutil.rmtree(tmp_path / "mirror")
    data.download(out, base, quiet=True)


def test_corrupted_file_is_rejected_and_not_written(tmp_path):
    base = mirror_of_upstream(tmp_path / "mirror")
    bad = "text2sql/geography.json"
    mirrored = pathlib.Path(urllib.request.url2pathname(urllib.parse.urlparse(data.source_url(bad, base)).path))
    mirrored.write_bytes(mirrored.read_bytes().replace(b"texas", b"Texas", 1))
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="geography.json: the sha256 of .* expected " + data.FILES[bad][1]):
        data.download(out, base, quiet=True)
    assert not (out / bad).exists() and os.listdir(out / "text2sql") == ["atis.json"]  # no partial file either
    assert (out / "e2e" / "devset.csv").read_bytes() == (SHARED / "e2e" / "devset.csv").read_bytes()


def test_unreachable_source_names_the_url_and_the_way_out(tmp_path):
    base = (tmp_path / "nowhere").as_uri()
    with pytest.raises(ConnectionError, match="cannot download " + data.source_url("e2e/devset.csv", base)) as e:
        data.download(tmp_path / "out", base, quiet=True)
    assert "--data-dir" in str(e.value) and "SPECSTREAM_DATA" in str(e.value)
    with pytest.raises(SystemExit, match="error: cannot download .*--data-dir"):  # the command line says the same
        data.main(["download", "--to", str(tmp_path / "out"), "--base-url", base])
    assert not (tmp_path / "out" / "e2e" / "devset.csv").exists()
