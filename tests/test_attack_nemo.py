"""Attacks through ``.nemo`` archives, config YAMLs and ``export-nemo -o`` (security items 1, 6 and 7).

Each test builds its hostile file here, runs it the way a user would (``zsq_tvm.cli.main`` or the
library call the CLI makes) and checks that nothing is written outside the extraction folder, that
memory and time stay bounded, and that the user sees one ``zsq: error:`` line with exit status 2.
"""
from __future__ import annotations

import gzip
import io
import os
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import onnx
import pytest
import torch

import zsq_tvm
from zsq_tvm import nemo_io
from zsq_tvm.cli import main
from zsq_tvm.core.errors import ModelLoadError
from zsq_tvm.nemo_io import UnsafeArchiveError, safe_extract
from conftest import add_tar_member


def cli(capsys, *argv):
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def one_error_line(rc, err):
    assert rc == 2, err
    assert err.startswith("zsq: error:") and err.count("\n") == 1, err
    return err


def _model_members(tf, arch="quartznet-tiny"):
    """The two members of a real .nemo (config + weights), so an archive is otherwise loadable."""
    torch.manual_seed(0)
    buf = io.BytesIO()
    torch.save(nemo_io.torch_from_config(arch).state_dict(), buf)
    add_tar_member(tf, "./model_config.yaml", nemo_io.config_path(arch).read_bytes())
    add_tar_member(tf, "./model_weights.ckpt", buf.getvalue())


def _small_weights() -> bytes:
    buf = io.BytesIO()
    torch.save({"encoder.x": torch.zeros(1)}, buf)
    return buf.getvalue()


# ------------------------------------------------------------------ item 1: links write outside the folder

def _cve_2025_4517_nemo(path: Path, extract_root: Path) -> Path:
    """CVE-2025-4517's chain: symlinks a..p each into a long directory, so the real path of
    ``a/b/.../p/lll`` exceeds PATH_MAX; os.path.realpath then stops resolving links and the tar
    ``data`` filter (and any realpath / lexical check) sees ``lll`` as a plain folder, while the
    kernel follows ``lll -> ../../..`` back to the top.  ``escape -> a/.../p/lll/..`` is thus judged
    inside but is the parent of the extraction folder, and ``escape/*`` lands there."""
    len_dest = len(str(extract_root)) + 1 + len("zsq-nemo-") + 8  # tempfile.mkdtemp(prefix="zsq-nemo-")
    comp = "d" * min(247, (3990 - len_dest) // 16 - 1)  # deepest folder < PATH_MAX, link path beyond it
    steps = "abcdefghijklmnop"
    with tarfile.open(path, "w") as tf:
        deep = ""
        for s in steps:
            add_tar_member(tf, os.path.join(deep, comp), type=tarfile.DIRTYPE)
            add_tar_member(tf, os.path.join(deep, s), type=tarfile.SYMTYPE, linkname=comp)
            deep = os.path.join(deep, comp)
        linkpath = os.path.join("/".join(steps), "l" * 254)
        add_tar_member(tf, linkpath, type=tarfile.SYMTYPE, linkname="../" * len(steps))
        add_tar_member(tf, "escape", type=tarfile.SYMTYPE, linkname=linkpath + "/..")
        add_tar_member(tf, "escape/victim.txt", b"overwritten by a .nemo\n")
        add_tar_member(tf, "escape/created.txt", b"created by a .nemo\n")
        _model_members(tf)
    return path


@pytest.mark.parametrize("how", ["nemo", "checkpoint", "quantize"])
def test_cve_2025_4517_link_chain_writes_nothing_outside(capsys, tmp_path, monkeypatch, how):
    root = tmp_path / "t"  # the extraction folder is made here: its parent is what the chain reaches
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    victim = root / "victim.txt"
    victim.write_text("original\n")
    evil = _cve_2025_4517_nemo(tmp_path / "evil.nemo", root)
    out = tmp_path / "out.onnx"
    argv = {"nemo": ["export-nemo", evil], "checkpoint": ["export-nemo", "quartznet-tiny", "--checkpoint", evil],
            "quantize": ["quantize", evil, "--frames", 32]}[how]  # quantize: -o is a folder, nothing of it made
    rc, _, err = cli(capsys, *argv, "-o", out)
    err = one_error_line(rc, err)
    assert "unsafe" in err and "link" in err
    assert victim.read_text() == "original\n" and sorted(p.name for p in root.iterdir()) == ["victim.txt"]
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["evil.nemo", "t"]


def test_link_chain_is_refused_before_anything_is_written(tmp_path):
    """``a -> .`` then ``a/b -> ..`` then ``b/victim``: each link looks harmless on its own."""
    dest = tmp_path / "x" / "dest"
    dest.mkdir(parents=True)
    bad = tmp_path / "bad.nemo"
    with tarfile.open(bad, "w") as tf:
        add_tar_member(tf, "a", type=tarfile.SYMTYPE, linkname=".")
        add_tar_member(tf, "a/b", type=tarfile.SYMTYPE, linkname="..")
        add_tar_member(tf, "b/victim.txt", b"pwned")
    with pytest.raises(UnsafeArchiveError, match="symbolic link") as e:
        safe_extract(bad, dest)
    assert "'a'" in str(e.value) and "\n" not in str(e.value)
    assert list(dest.iterdir()) == [] and sorted(p.name for p in (tmp_path / "x").iterdir()) == ["dest"]


@pytest.mark.parametrize("member", [
    {"name": "./tokenizer.model", "type": tarfile.SYMTYPE, "linkname": "model_config.yaml"},
    {"name": "./tokenizer.model", "type": tarfile.LNKTYPE, "linkname": "./model_config.yaml"},
    {"name": "./here", "type": tarfile.SYMTYPE, "linkname": "."},
], ids=["symlink-inside", "hardlink-inside", "symlink-to-dot"])
def test_every_link_is_refused_even_inside_and_unneeded(tmp_path, member):
    """A link is refused wherever it points and even as a member the reader does not need."""
    path = tmp_path / "m.nemo"
    with tarfile.open(path, "w") as tf:
        _model_members(tf)
        add_tar_member(tf, **member)
    with pytest.raises(UnsafeArchiveError, match="link") as e:
        nemo_io.read_nemo(path)
    assert member["name"] in str(e.value)
    dest = tmp_path / "d"
    dest.mkdir()
    with pytest.raises(UnsafeArchiveError):
        safe_extract(path, dest)
    assert list(dest.iterdir()) == []


@pytest.mark.parametrize("names,why", [
    (["./model_config.yaml", "model_config.yaml"], "duplicate"),  # the second would replace the first
    (["x", "x/y"], "which is a file"),
    (["a\\b.txt"], "backslash"),
])
def test_name_tricks_are_refused_before_writing(tmp_path, names, why):
    path = tmp_path / "n.nemo"
    with tarfile.open(path, "w") as tf:
        for n in names:
            add_tar_member(tf, n, b"a: 1\n")
    dest = tmp_path / "d"
    dest.mkdir()
    with pytest.raises(UnsafeArchiveError, match=why):
        safe_extract(path, dest)
    assert list(dest.iterdir()) == []


def test_read_nemo_extracts_only_config_and_weights(tmp_path, monkeypatch):
    """Other members (a tokenizer, anything) are checked but never written to disk."""
    path = tmp_path / "m.nemo"
    with tarfile.open(path, "w") as tf:
        _model_members(tf)
        add_tar_member(tf, "./tokenizer/vocab.txt", b"a\nb\n")
        add_tar_member(tf, "./extra.bin", b"\0" * 4096)
    written = []
    real = nemo_io.safe_extract

    def spy(tar_path, dest, **kw):
        real(tar_path, dest, **kw)
        written.extend(sorted(str(p.relative_to(dest)) for p in Path(dest).rglob("*")))
        return Path(dest)

    monkeypatch.setattr(nemo_io, "safe_extract", spy)
    cfg, sd = nemo_io.read_nemo(path)
    assert written == ["model_config.yaml", "model_weights.ckpt"]
    assert "encoder" in cfg and any(k.startswith("encoder.") for k in sd)


# ------------------------------------------------------------------ item 6: archive size / count / header bombs

def _gzip_bomb(path: Path, declared: int) -> Path:
    """A .tar.gz of one ``declared``-byte member of zeros, built from repeated gzip members (RFC 1952
    allows concatenation), so a 64 MiB member costs ~70 KB on disk and no time to build."""
    header = tarfile.TarInfo("./model_weights.ckpt")
    header.size = declared
    mib = gzip.compress(b"\0" * (1 << 20), 9)
    with open(path, "wb") as f:
        f.write(gzip.compress(header.tobuf(tarfile.PAX_FORMAT)))
        for _ in range(declared >> 20):
            f.write(mib)
        f.write(gzip.compress(b"\0" * (tarfile.RECORDSIZE)))
    return path


def test_nemo_byte_budget_declared_and_cli(capsys, tmp_path, monkeypatch):
    bomb = _gzip_bomb(tmp_path / "bomb.nemo", 64 << 20)
    assert bomb.stat().st_size < 200_000
    dest = tmp_path / "d"
    dest.mkdir()
    t = time.monotonic()
    with pytest.raises(UnsafeArchiveError, match="more than 1048576 bytes"):
        safe_extract(bomb, dest, max_bytes=1 << 20)
    assert time.monotonic() - t < 2 and list(dest.iterdir()) == []  # refused from the header: nothing inflated
    monkeypatch.setattr(nemo_io, "MAX_NEMO_BYTES", 1 << 20)
    rc, _, err = cli(capsys, "export-nemo", bomb, "-o", tmp_path / "o.onnx")
    assert "more than 1048576 bytes" in one_error_line(rc, err)


def test_nemo_byte_budget_counts_a_real_model(tmp_path):
    """A genuine small .nemo passes with room, and fails once the budget is below its weights."""
    path = tmp_path / "m.nemo"
    with tarfile.open(path, "w") as tf:
        _model_members(tf)
    weights = tarfile.open(path).getmember("./model_weights.ckpt").size
    nemo_io.read_nemo(path, max_bytes=weights + (64 << 10))
    with pytest.raises(UnsafeArchiveError, match="bytes"):
        nemo_io.read_nemo(path, max_bytes=weights // 2)


def test_nemo_member_count_limit(capsys, tmp_path):
    path = tmp_path / "many.nemo"
    with tarfile.open(path, "w") as tf:
        for i in range(nemo_io.MAX_NEMO_MEMBERS + 1):
            add_tar_member(tf, f"f{i}", b"")
    rc, _, err = cli(capsys, "export-nemo", path, "-o", tmp_path / "o.onnx")
    assert f"more than {nemo_io.MAX_NEMO_MEMBERS} members" in one_error_line(rc, err)
    dest = tmp_path / "d"
    dest.mkdir()
    with pytest.raises(UnsafeArchiveError, match="more than 3 members"):
        safe_extract(path, dest, max_members=3)
    assert list(dest.iterdir()) == []


def test_huge_tar_header_is_refused_unread(capsys, tmp_path):
    """A 20 MiB pax header (a ~20 KB .tar.gz) would be read into memory in one piece by tarfile."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tf:
        ti = tarfile.TarInfo("./model_config.yaml")
        ti.pax_headers = {"comment": "x" * (nemo_io.MAX_TAR_HEADER_BYTES + (4 << 20))}
        tf.addfile(ti, io.BytesIO(b""))
    path = tmp_path / "hdr.nemo"
    path.write_bytes(gzip.compress(raw.getvalue(), 9))
    assert path.stat().st_size < 100_000
    rc, _, err = cli(capsys, "export-nemo", path, "-o", tmp_path / "o.onnx")
    assert "tar header is larger than" in one_error_line(rc, err)


def test_chained_pax_headers_are_a_one_line_error(capsys, tmp_path):
    """tarfile follows consecutive pax headers recursively: 3000 of them (4.6 MB) exhaust its stack."""
    ti = tarfile.TarInfo("x")
    ti.pax_headers = {"comment": "y"}
    one = ti.tobuf(tarfile.PAX_FORMAT)
    path = tmp_path / "chain.nemo"
    path.write_bytes(one[:-512] * 3000 + one[-512:] + b"\0" * 1024)
    rc, _, err = cli(capsys, "export-nemo", path, "-o", tmp_path / "o.onnx")
    err = one_error_line(rc, err)
    assert "not a readable" in err or "corrupt" in err


# ------------------------------------------------------------------ item 6: YAML bombs, cycles, depth, size

def _alias_bomb(levels=10, width=10) -> str:
    lines = [f"a0: &a0 [{', '.join(['lol'] * width)}]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


def _interpolation_bomb(levels=10, width=10) -> str:
    cfg = nemo_io.config_path("quartznet-tiny").read_text()
    lines = [f"b0: [{', '.join(['lol'] * width)}]"]
    for i in range(1, levels):
        lines.append(f"b{i}: [{', '.join([repr('${b%d}' % (i - 1))] * width)}]")
    return cfg + "\n".join(lines) + "\n"


def _run_limited(argv, timeout=120):
    """The CLI in a child process under a 3 GiB address-space limit, timed."""
    code = "import sys; from zsq_tvm.cli import main; sys.exit(main(sys.argv[1:]))"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(zsq_tvm.__file__).parents[1]),
                                                       os.environ.get("PYTHONPATH", "")]))

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))

    t = time.monotonic()
    try:
        p = subprocess.run([sys.executable, "-c", code, *map(str, argv)], capture_output=True, text=True,
                           timeout=timeout, preexec_fn=limit, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail(f"zsq {' '.join(map(str, argv))} still running after {timeout} s")
    return p.returncode, p.stderr, time.monotonic() - t


@pytest.mark.parametrize("kind", ["alias-bomb.nemo", "alias-bomb.yaml", "interpolation-bomb.yaml"])
def test_small_config_bombs_fail_fast_in_bounded_memory(tmp_path, kind):
    """10^10 values from < 1 KB of YAML: refused in seconds, never expanded (3 GiB address space)."""
    text = _alias_bomb() if kind.startswith("alias") else _interpolation_bomb()
    if kind.endswith(".nemo"):
        src = tmp_path / kind
        with tarfile.open(src, "w") as tf:
            add_tar_member(tf, "./model_config.yaml", text.encode())
            add_tar_member(tf, "./model_weights.ckpt", _small_weights())
        assert src.stat().st_size < 12_000
    else:
        src = tmp_path / kind
        src.write_text(text)
    rc, err, secs = _run_limited(["export-nemo", src, "-o", tmp_path / "o.onnx"])
    assert rc == 2 and err.startswith("zsq: error:") and err.count("\n") == 1, err[-2000:]
    assert f"more than {nemo_io.MAX_YAML_NODES} values" in err
    assert secs < 60


def test_alias_bomb_is_detected_linearly():
    """The expansion is counted with memoized anchor sizes: 10^30 values cost no more than 10^3."""
    t = time.monotonic()
    with pytest.raises(ModelLoadError, match="aliases counted at their full size"):
        nemo_io._check_yaml_events(_alias_bomb(levels=30).encode(), "bomb.yaml")
    assert time.monotonic() - t < 1


def test_interpolation_cycle_names_the_key_chain(capsys, tmp_path):
    p = tmp_path / "cycle.yaml"
    p.write_text(nemo_io.config_path("quartznet-tiny").read_text() + "a: ${b}\nb: ${model.a}\n")
    with pytest.raises(ModelLoadError, match=r"cycle \(a -> b -> a\)"):
        nemo_io.load_config(p)
    rc, _, err = cli(capsys, "export-nemo", p, "-o", tmp_path / "o.onnx")
    assert "a -> b -> a" in one_error_line(rc, err)
    nemo = tmp_path / "cycle.nemo"
    with tarfile.open(nemo, "w") as tf:
        add_tar_member(tf, "./model_config.yaml", p.read_bytes())
        add_tar_member(tf, "./model_weights.ckpt", _small_weights())
    rc, _, err = cli(capsys, "export-nemo", nemo, "-o", tmp_path / "o.onnx")
    assert "a -> b -> a" in one_error_line(rc, err)


@pytest.mark.parametrize("tail,why", [
    ("a: ${a}\n", r"cycle \(a -> a\)"),
    ("x:\n  y: ${x}\n", r"cycle \(x.y -> x"),  # a value that holds itself
    ("r: &r [1, *r]\n", "refers to a collection that contains it"),  # a recursive YAML alias
    ("deep: " + "[" * 100_000 + "]" * 100_000 + "\n", "deeper than 64 levels"),
    ("".join(f"c{i}: ${{c{i + 1}}}\n" for i in range(200)) + "c200: 1\n", "deeper than 64 levels"),
])
def test_cycles_and_depth_are_one_line_errors(capsys, tmp_path, tail, why):
    p = tmp_path / "c.yaml"
    p.write_text(nemo_io.config_path("quartznet-tiny").read_text() + tail)
    with pytest.raises(ModelLoadError, match=why):
        nemo_io.load_config(p)
    rc, _, err = cli(capsys, "export-nemo", p, "-o", tmp_path / "o.onnx")
    one_error_line(rc, err)


def test_oversized_yaml_is_refused_unread(tmp_path, monkeypatch):
    p = tmp_path / "big.yaml"
    cfg = nemo_io.config_path("quartznet-tiny").read_text()
    p.write_text(cfg + "#" * (nemo_io.MAX_YAML_BYTES + 1) + "\n")  # a valid config, padded by a comment
    real_open = open

    def no_read(f, *a, **k):
        assert Path(f) != p, "the oversized YAML was opened"
        return real_open(f, *a, **k)

    monkeypatch.setattr("builtins.open", no_read)
    with pytest.raises(ModelLoadError, match=f"at most {nemo_io.MAX_YAML_BYTES}"):
        nemo_io.load_config(p)


# ------------------------------------------------------------------ item 7: export-nemo -o

@pytest.fixture
def no_model_work(monkeypatch):
    def no_work(*a, **k):
        raise AssertionError("the model was loaded before -o was checked")

    monkeypatch.setattr(nemo_io, "_model_from_source", no_work)
    return monkeypatch


def test_export_nemo_output_directory_is_an_error(capsys, tmp_path, no_model_work):
    d = tmp_path / "dir"
    d.mkdir()
    rc, _, err = cli(capsys, "export-nemo", "quartznet-tiny", "-o", d)
    assert "is a directory" in one_error_line(rc, err)
    rc, _, err = cli(capsys, "export-nemo", "quartznet-tiny", "-o", d, "--overwrite")
    assert "is a directory" in one_error_line(rc, err)
    assert list(d.iterdir()) == []


def test_export_nemo_refuses_to_replace_without_overwrite(capsys, tmp_path, no_model_work):
    out = tmp_path / "m.onnx"
    out.write_bytes(b"keep")
    rc, _, err = cli(capsys, "export-nemo", "quartznet-tiny", "--frames", 32, "-o", out)
    err = one_error_line(rc, err)
    assert "already exists" in err and "--overwrite" in err and out.read_bytes() == b"keep"
    no_model_work.undo()
    rc, so, err = cli(capsys, "export-nemo", "quartznet-tiny", "--frames", 32, "-o", out, "--overwrite")
    assert rc == 0, err
    assert sum(n.op_type == "BatchNormalization" for n in onnx.load(str(out)).graph.node) > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # no temporary left


def test_quantize_nemo_checks_the_cheap_things_before_the_export(capsys, tmp_path, no_model_work):
    """A missing / folder / unreadable .nemo, and an output that exists, are refused before the archive is read."""
    no_model_work.setattr(nemo_io, "export_nemo", lambda *a, **k: pytest.fail("exported before the checks"))
    d = tmp_path / "d.nemo"
    d.mkdir()
    locked = tmp_path / "locked.nemo"
    locked.write_bytes(b"x")
    locked.chmod(0)
    out = tmp_path / "q"
    cases = [(tmp_path / "missing.nemo", "does not exist"), (d, "not a regular file")]
    if not os.access(locked, os.R_OK):  # root reads anything
        cases.append((locked, "not readable"))
    for src, why in cases:
        rc, _, err = cli(capsys, "quantize", src, "--frames", 32, "-o", out)
        assert why in one_error_line(rc, err), err
    assert not out.exists()
    out.mkdir()
    (out / "keep").write_text("x")
    rc, _, err = cli(capsys, "quantize", tmp_path / "missing.nemo", "--frames", 32, "-o", out)
    assert "exists" in one_error_line(rc, err) and (out / "keep").read_text() == "x"


def test_export_nemo_unwritable_output_before_any_work(capsys, tmp_path, no_model_work):
    afile = tmp_path / "afile"
    afile.write_text("x")
    for out in (afile / "m.onnx", "/proc/self/m.onnx", "/proc/zsq-no-such/m.onnx"):
        rc, _, err = cli(capsys, "export-nemo", "quartznet-tiny", "-o", out)
        assert "cannot write" in one_error_line(rc, err), (out, err)
    assert afile.read_text() == "x"
