import errno
import functools
import hashlib
import http.server
import json
import runpy
import threading
import types
from pathlib import Path

import pytest
import yaml
from conftest import cifar_python_files, write_tar

from edgeml.data.readers import load_cifar10
from edgeml.data.sources import OFFICIAL_MD5, FetchError, fetch, tree_sha256
from edgeml.params import Source

REPO = Path(__file__).parents[1]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_local_archive_checked_against_mirror_sha256sums(mirror, tmp_path):
    record = fetch("cifar10", Source(str(mirror / "cifar10-jpeg.tar.gz")), tmp_path / "raw")
    copied = Path(record.path)
    assert copied.read_bytes() == (mirror / "cifar10-jpeg.tar.gz").read_bytes()
    assert record.sha256 == sha256(copied)
    assert record.checked_against == f"sha256:{record.sha256}"
    assert record.source == str(mirror / "cifar10-jpeg.tar.gz")


def test_checksum_mismatch_leaves_nothing(mirror, tmp_path):
    dest = tmp_path / "raw"
    with pytest.raises(FetchError, match="checksum mismatch.*cifar10-jpeg.tar.gz"):
        fetch("cifar10", Source(str(mirror / "cifar10-jpeg.tar.gz"), sha256="0" * 64), dest)
    assert [p for p in dest.rglob("*") if p.is_file()] == []


def test_no_known_checksum_is_an_error(tmp_path):
    archive = tmp_path / "data.tar.gz"
    archive.write_bytes(b"x")
    with pytest.raises(FetchError, match="no checksum known.*set its sha256"):
        fetch("cifar10", Source(str(archive)), tmp_path / "raw")


def test_missing_source_names_the_param(tmp_path):
    with pytest.raises(FetchError, match="fetch.cifar10.source: .*does not exist"):
        fetch("cifar10", Source(str(tmp_path / "absent.tar.gz")), tmp_path / "raw")


def test_extracted_folder_source(tmp_path):
    folder = tmp_path / "cifar10-jpeg"
    (folder / "train" / "cat").mkdir(parents=True)
    (folder / "train" / "cat" / "0000.png").write_bytes(b"png")
    digest = tree_sha256(folder)
    record = fetch("cifar10", Source(str(folder), sha256=digest), tmp_path / "raw")
    assert (Path(record.path) / "train" / "cat" / "0000.png").read_bytes() == b"png"
    with pytest.raises(FetchError, match="tree sha256"):
        fetch("cifar10", Source(str(folder), sha256="f" * 64), tmp_path / "raw2")


@pytest.fixture
def http_server(mirror):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(mirror))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_download_verifies_md5(http_server, mirror, tmp_path):
    md5 = hashlib.md5((mirror / "cifar10-jpeg.tar.gz").read_bytes()).hexdigest()
    record = fetch("cifar10", Source(f"{http_server}/cifar10-jpeg.tar.gz", md5=md5), tmp_path / "raw")
    assert Path(record.path).read_bytes() == (mirror / "cifar10-jpeg.tar.gz").read_bytes()
    assert record.checked_against == f"md5:{md5}"


def test_download_failure_retries_then_names_source(http_server, tmp_path):
    with pytest.raises(FetchError, match="after 2 tries"):
        fetch("cifar10", Source(f"{http_server}/absent.tar.gz", md5="0" * 32), tmp_path / "raw", retries=2)
    assert [p for p in (tmp_path / "raw").rglob("*") if p.is_file()] == []


class TruncatingHandler(http.server.BaseHTTPRequestHandler):
    """Promises 1,000 bytes and closes the connection after 500, as a dropped download does."""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        self.wfile.write(b"x" * 500)
        self.close_connection = True

    def log_message(self, *args):
        pass


def test_truncated_download_is_retried_then_named(tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), TruncatingHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/cifar-10-python.tar.gz"
        with pytest.raises(FetchError, match=r"fetch.cifar10: could not read .* after 2 tries: the transfer ended after 500 of 1000 bytes"):
            fetch("cifar10", Source(url, md5="0" * 32), tmp_path / "raw", retries=2)
    finally:
        server.shutdown()
    assert [p for p in (tmp_path / "raw").rglob("*") if p.is_file()] == []


def test_corrupt_local_archive_fails_its_checksum(mirror, tmp_path):
    archive = mirror / "cifar10-jpeg.tar.gz"
    archive.write_bytes(archive.read_bytes()[:1000])  # SHA256SUMS still lists the complete file
    with pytest.raises(FetchError, match=r"checksum mismatch .*\(1000 bytes\).*truncated, corrupt"):
        fetch("cifar10", Source(str(archive)), tmp_path / "raw")
    assert [p for p in (tmp_path / "raw").rglob("*") if p.is_file()] == []


def test_full_disk_stops_at_once_and_leaves_nothing(mirror, tmp_path, monkeypatch):
    def full(src, dst, total, desc):
        dst.write(src.read(10))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("edgeml.data.sources._copy_hashing", full)
    monkeypatch.setattr("time.sleep", lambda s: pytest.fail("a full disk must not be retried"))
    with pytest.raises(FetchError, match=r"fetch.cifar10: cannot write .*cifar10-jpeg.tar.gz: No space left on device; free disk space"):
        fetch("cifar10", Source(str(mirror / "cifar10-jpeg.tar.gz")), tmp_path / "raw")
    assert [p for p in (tmp_path / "raw").rglob("*") if p.is_file()] == []


def test_relative_source_is_relative_to_the_repository_not_the_cwd(mirror, tmp_path, monkeypatch):
    """`dvc exp run --queue/--temp` runs stages in <repo>/.dvc/tmp/exps/<tmp>/ with DVC_ROOT set to
    the original repository; ``../mirror`` must still mean the folder beside that repository."""
    repo = tmp_path / "repo"
    copy = repo / ".dvc" / "tmp" / "exps" / "standalone" / "tmpabc"
    copy.mkdir(parents=True)
    monkeypatch.chdir(copy)
    monkeypatch.setenv("DVC_ROOT", str(repo))
    record = fetch("cifar10", Source("../mirror/cifar10-jpeg.tar.gz"), copy / "raw")  # checked via SHA256SUMS
    assert Path(record.path).read_bytes() == (mirror / "cifar10-jpeg.tar.gz").read_bytes()
    assert record.source == "../mirror/cifar10-jpeg.tar.gz"  # as params.yaml names it
    monkeypatch.delenv("DVC_ROOT")  # a stage run by hand: relative to the cwd (the repository root)
    with pytest.raises(FetchError, match=r"fetch.cifar10.source: '../mirror/cifar10-jpeg.tar.gz' does not exist \(looked for .*tmpabc/../mirror"):
        fetch("cifar10", Source("../mirror/cifar10-jpeg.tar.gz"), copy / "raw")
    monkeypatch.chdir(repo)
    assert fetch("cifar10", Source("../mirror/cifar10-jpeg.tar.gz"), tmp_path / "raw2").sha256 == record.sha256


# --- A list of sources: the mirror first, the official URL second ---------------------------------

@pytest.fixture
def official(tmp_path, monkeypatch):
    """A loopback server holding a tiny cifar-10-python.tar.gz in the official pickle layout, whose md5
    edgeml.data.sources knows as it knows the real URL's; ``served`` lists the paths requested."""
    folder = tmp_path / "official"
    folder.mkdir()
    archive = write_tar(folder / "cifar-10-python.tar.gz", cifar_python_files(train_per_class=1, test_per_class=1))
    served: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format, *args):  # quiet; remember the request instead
            served.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/cifar-10-python.tar.gz"
    monkeypatch.setitem(OFFICIAL_MD5, url, hashlib.md5(archive.read_bytes()).hexdigest())
    yield types.SimpleNamespace(url=url, archive=archive, served=served)
    server.shutdown()
    server.server_close()


def test_absent_mirror_falls_through_to_the_official_url(official, tmp_path, capsys):
    absent = str(tmp_path / "shared" / "datasets" / "cifar10-jpeg.tar.gz")
    record = fetch("cifar10", Source([absent, official.url]), tmp_path / "raw")
    assert (record.source, record.failed_sources) == (official.url, (absent,))
    assert record.checked_against == f"md5:{OFFICIAL_MD5[official.url]}"
    assert Path(record.path).read_bytes() == official.archive.read_bytes()
    assert len(load_cifar10(record.path)["test_y"]) == 10  # the official layout, as prepare reads it
    err = capsys.readouterr().err
    assert f"fetch.cifar10: source 1 of 2 {absent!r} failed: does not exist (looked for {absent}); trying the next" in err


def test_every_source_failing_names_the_dataset_and_each_source(official, tmp_path):
    absent = str(tmp_path / "absent.tar.gz")
    gone = official.url.replace("cifar-10-python", "gone")
    with pytest.raises(FetchError) as info:
        fetch("cifar10", Source([absent, Source(gone, md5="0" * 32)]), tmp_path / "raw", retries=1)
    message = str(info.value)
    assert message.startswith("fetch.cifar10: none of its 2 sources could be obtained (")
    assert f"1. {absent!r}: does not exist (looked for {absent})" in message
    assert f"2. {gone!r}: could not read it after 1 tries: HTTP Error 404" in message
    assert "add one to fetch.cifar10.source" in message
    assert [p for p in (tmp_path / "raw").rglob("*") if p.is_file()] == []


def test_corrupt_mirror_stops_instead_of_falling_through(mirror, official, tmp_path, capsys):
    """A mirror that is there but fails its checksum is corruption, not absence: other pixels from
    the official URL must not replace it silently."""
    archive = mirror / "cifar10-jpeg.tar.gz"
    archive.write_bytes(archive.read_bytes()[:1000])  # SHA256SUMS still lists the complete file
    with pytest.raises(FetchError, match=r"fetch.cifar10: checksum mismatch for .*cifar10-jpeg.tar.gz"):
        fetch("cifar10", Source([str(archive), official.url]), tmp_path / "raw")
    assert official.served == []
    assert "trying the next" not in capsys.readouterr().err
    assert [p for p in (tmp_path / "raw").rglob("*") if p.is_file()] == []


def test_stage_records_the_source_used_and_those_that_failed(mirror, official, tmp_path, monkeypatch):
    """The committed params with the mirror moved: cifar10 a list whose mirror is absent, every other
    dataset a single string (as before lists); data/sources.json keeps its fields and adds failed_sources."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    for spec in raw["fetch"].values():
        if isinstance(spec, dict):
            first = spec["source"][0] if isinstance(spec["source"], list) else spec["source"]
            spec["source"] = str(mirror / first.removeprefix("../shared/datasets/"))
    absent = str(tmp_path / "no-mirror" / "cifar10-jpeg.tar.gz")
    raw["fetch"]["cifar10"]["source"] = [absent, official.url]
    project = tmp_path / "project"
    project.mkdir()
    (project / "params.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(project)
    runpy.run_path(str(REPO / "stages" / "fetch.py"), run_name="stage")["main"]()
    sources = json.loads((project / "data" / "sources.json").read_text())
    cifar10, mnist = sources["cifar10"], sources["mnist"]
    assert (cifar10["source"], cifar10["failed_sources"]) == (official.url, [absent])
    assert cifar10["path"] == "data/raw/cifar10/cifar-10-python.tar.gz"
    assert (project / cifar10["path"]).read_bytes() == official.archive.read_bytes()
    assert set(mnist) == {"name", "source", "path", "sha256", "bytes", "checked_against", "failed_sources"}
    assert (mnist["source"], mnist["failed_sources"]) == (str(mirror / "mnist/t10k-images-idx3-ubyte.gz"), [])
