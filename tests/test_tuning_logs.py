"""Tuning logs that ship and apply in every install (issue 31).

The lookup order of the database ``zsq compile`` applies (:func:`zsq_tvm.tuning_db.find_db`): ``--db`` /
``tuning_db=`` → ``$ZSQ_TUNING_DB`` → the per-user cache ``${XDG_CACHE_HOME:-~/.cache}/zsq-tvm/tuning/<key>/``
(when it has records) → the log shipped in the package, each level winning over the next; reading a
shipped log creates no file in the package folder; ``zsq tune`` without ``--db`` writes into the user cache
(seeded with the shipped log), never into the package; ``zsq compile --db DIR`` applies DIR and refuses a
folder that is no database (one line, exit 2) before any work.  One test builds the wheel, installs it into a
fresh venv and checks, from outside the repository, that the installed package finds its shipped log in
site-packages and that compiling QuartzNet-5x5 (T = 1000) for the host's class applies a shipped record.
"""

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

tvm = pytest.importorskip("tvm")

import zsq_tvm  # noqa: E402
from zsq_tvm import cli  # noqa: E402
from zsq_tvm.build import lower  # noqa: E402
from zsq_tvm.core.errors import ConfigError  # noqa: E402
from zsq_tvm.targets import get_target  # noqa: E402
from zsq_tvm.tuning_db import (RECORDS, SHIPPED_LOGS, WORKLOADS, TuningDB, TuningWarning, apply_tuning,  # noqa: E402
                               find_db, target_key, user_cache_dir)

ROOT = Path(__file__).resolve().parents[1]
from test_tune import _records_for, _tiny_mod, host, tiny_lowered  # noqa: E402,F401  (fixtures shared with test_tune)


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A clean environment: no $ZSQ_TUNING_DB, HOME and XDG_CACHE_HOME in tmp."""
    monkeypatch.delenv("ZSQ_TUNING_DB", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    return monkeypatch


def _db(path, tgt, lowered):
    assert _records_for(lowered, tgt, TuningDB(path, tgt)) >= 1
    return Path(path)


def test_user_cache_follows_xdg_then_home(tmp_path, env):
    assert user_cache_dir() == tmp_path / "home" / ".cache" / "zsq-tvm" / "tuning"
    env.setenv("XDG_CACHE_HOME", "relative/ignored")  # the XDG spec: a relative path is ignored
    assert user_cache_dir() == tmp_path / "home" / ".cache" / "zsq-tvm" / "tuning"
    env.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert user_cache_dir() == tmp_path / "xdg" / "zsq-tvm" / "tuning"


def test_lookup_order_flag_env_user_shipped(tmp_path, env, host, tiny_lowered):
    key = target_key(host)
    shipped = SHIPPED_LOGS / key
    if not (shipped / RECORDS).is_file():
        pytest.skip(f"no log shipped for this host's class {key!r}")
    env.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    before = sorted(os.listdir(shipped))
    # 4. nothing else: the shipped log, read without creating anything in the package folder
    assert find_db(host) == (shipped, "shipped")
    with warnings.catch_warnings():
        warnings.simplefilter("error", TuningWarning)
        _, info = apply_tuning(tiny_lowered, host)
    assert info["db"] == str(shipped) and info["source"] == "shipped"
    assert sorted(os.listdir(shipped)) == before  # no .lock, no new file
    # 3. a user cache without records does not count; with records it wins over the shipped log
    user = tmp_path / "xdg" / "zsq-tvm" / "tuning" / key
    user.mkdir(parents=True)
    assert find_db(host)[1] == "shipped"
    _db(user, host, tiny_lowered)
    assert find_db(host) == (user, "user")
    _, info = apply_tuning(tiny_lowered, host)
    assert info == {"db": str(user), "source": "user", "applied": info["applied"]} and info["applied"] >= 1
    # 2. $ZSQ_TUNING_DB wins over the user cache; set to a folder without records it means untuned
    envdb = _db(tmp_path / "envdb", host, tiny_lowered)
    env.setenv("ZSQ_TUNING_DB", str(envdb))
    assert find_db(host) == (envdb, "env")
    env.setenv("ZSQ_TUNING_DB", str(tmp_path / "nonexistent"))
    assert find_db(host) == (None, None)
    _, info = apply_tuning(tiny_lowered, host)
    assert info["db"] is None and info["applied"] == 0
    # 1. the flag wins over everything
    env.setenv("ZSQ_TUNING_DB", str(envdb))
    flag = _db(tmp_path / "flagdb", host, tiny_lowered)
    assert find_db(host, flag) == (flag, "flag")
    _, info = apply_tuning(tiny_lowered, host, flag)
    assert info["db"] == str(flag) and info["source"] == "flag" and info["applied"] >= 1


def test_tune_without_db_writes_the_user_cache(tmp_path, env, host):
    """`zsq tune` without --db: the user cache (seeded with the shipped log), never the package folder."""
    from zsq_tvm.tune import tune

    env.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    key = target_key(host)
    shipped = SHIPPED_LOGS / key
    before = {p.name: p.stat().st_size for p in shipped.iterdir()} if shipped.is_dir() else {}
    res = tune(_tiny_mod(), "host-generic", trials=1, progress=False, per_iter=1, population=16, build_timeout=60)
    user = tmp_path / "xdg" / "zsq-tvm" / "tuning" / key
    assert res["db"] == str(user) and res["trials_run"] == 1, res
    shipped_n = 0
    if (shipped / RECORDS).is_file():
        shipped_n = len(TuningDB(shipped, host, create=False).get_all_tuning_records())
    assert res["records_after"] == shipped_n + 1 and len((user / RECORDS).read_text().splitlines()) == 1 + shipped_n + 1
    after = {p.name: p.stat().st_size for p in shipped.iterdir()} if shipped.is_dir() else {}
    assert after == before  # the package folder is untouched
    assert find_db(host) == (user, "user")  # and `zsq compile` applies what was tuned


def test_compile_db_flag_applies_and_refuses_a_bad_db(tmp_path, env, host, tiny_lowered, capsys):
    q = zsq_tvm.quantize("quartznet-tiny", zsq_tvm.QuantConfig(frames=48))
    q.save(tmp_path / "q")
    db = _db(tmp_path / "db", host, lower(q.mod, host)[0])
    # the Python API and the command line: the build names the database it applied
    b = zsq_tvm.compile(q, target="host-generic", tuning_db=db)
    t = b.integer_only["tuning"]
    assert t["db"] == str(db) and t["source"] == "flag" and t["applied"] >= 1, t
    assert cli.main(["compile", str(tmp_path / "q"), "--target", "host-generic", "--db", str(db),
                     "-o", str(tmp_path / "b"), "--json"]) == 0
    t = json.loads(capsys.readouterr().out)["integer_only"]["tuning"]
    assert t["db"] == str(db) and t["applied"] >= 1
    # refused in one line, exit 2, before any work: missing, a file, a folder without records, no header,
    # another CPU class, a target that takes no tuning
    (tmp_path / "file").write_text("x")
    (tmp_path / "empty").mkdir()
    (tmp_path / "garbled").mkdir()
    (tmp_path / "garbled" / RECORDS).write_text("garbage\n")
    from zsq_tvm.backends.x86.cpu import host_cpu, isa_class

    other = tvm.target.Target({"kind": "llvm", "mcpu": "haswell" if isa_class(host_cpu()) != "avx2" else "znver4"})
    _db(tmp_path / "other", other, tiny_lowered)
    for bad, msg in [(tmp_path / "missing", "does not exist"), (tmp_path / "file", "is not a folder"),
                     (tmp_path / "empty", "is not a tuning database"), (tmp_path / "garbled", "no zsq header"),
                     (tmp_path / "other", "was tuned for")]:
        with pytest.raises(ConfigError, match=msg):
            zsq_tvm.compile(tmp_path / "nonexistent-q", target="host-generic", tuning_db=bad)  # q never read
        assert cli.main(["compile", str(tmp_path / "q"), "--target", "host-generic", "--db", str(bad),
                         "-o", str(tmp_path / "b2")]) == 2
        err = capsys.readouterr().err.strip()
        assert msg in err and "\n" not in err, err
        assert not (tmp_path / "b2").exists()
    with pytest.raises(ConfigError, match="applies no tuning database"):
        zsq_tvm.compile(tmp_path / "nonexistent-q", target="cuda-sm_75", tuning_db=db)


_INSTALLED = r"""
import json, os, sys
import zsq_tvm
from zsq_tvm.targets import get_target
from zsq_tvm.tuning_db import SHIPPED_LOGS, TuningDB, find_db, target_key
tgt = get_target(sys.argv[1]).make()
path, source = find_db(tgt)
out = {"package": zsq_tvm.__file__, "db": str(path), "source": source, "key": target_key(tgt),
       "loaded": TuningDB(path, tgt, create=False).loaded if path else 0,
       "files": sorted(os.listdir(SHIPPED_LOGS / target_key(tgt)))}
q = zsq_tvm.quantize("quartznet5x5", zsq_tvm.QuantConfig(frames=1000))
out["tuning"] = zsq_tvm.compile(q, target=sys.argv[1]).integer_only.get("tuning")
out["files_after"] = sorted(os.listdir(SHIPPED_LOGS / target_key(tgt)))
print("RESULT " + json.dumps(out))
"""


def test_wheel_install_ships_and_applies_its_log(tmp_path):
    """`pip wheel` of the repository → a fresh venv (system site-packages for TVM) → from outside the
    repository, the installed package finds its shipped log in site-packages and a compile applies it."""
    from zsq_tvm.backends.x86.cpu import host_cpu, isa_class

    cls = isa_class(host_cpu())
    target = {"avx512vnni": "x86-avx512vnni", "avx2": "x86-avx2"}.get(cls)
    if target is None:
        pytest.skip(f"no log is shipped for this CPU's class ({cls!r})")
    # build from a copy: an in-tree build would leave build/ and *.egg-info in the checkout
    # (only what the wheel is made of: no stray build outputs or large local folders of a checkout)
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("zsq_tvm", "relax_passes"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", ".lock", "*.egg-info"))
    run = dict(capture_output=True, text=True, timeout=600)
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(src),
                        "-w", str(tmp_path / "wheel")], **run)
    assert r.returncode == 0, r.stderr[-2000:]
    (whl,) = (tmp_path / "wheel").glob("zsq_tvm-*.whl")
    import zipfile

    names = zipfile.ZipFile(whl).namelist()
    key = target_key(get_target(target).make())
    assert f"zsq_tvm/tuning_logs/{key}/{RECORDS}" in names and f"zsq_tvm/tuning_logs/{key}/{WORKLOADS}" in names
    venv = tmp_path / "venv"
    # no pip inside the venv (a Python without ensurepip still makes one): this pip installs into its site-packages
    r = subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)], **run)
    assert r.returncode == 0, r.stderr[-2000:]
    py = venv / "bin" / "python"
    site_packages = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                   **run).stdout.strip()
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target",
                        site_packages, str(whl)], **run)
    assert r.returncode == 0, r.stderr[-2000:]
    envv = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "ZSQ_TUNING_DB")}
    envv.update(HOME=str(tmp_path / "home"), XDG_CACHE_HOME=str(tmp_path / "xdg"))
    r = subprocess.run([str(py), "-c", _INSTALLED, target], cwd=str(tmp_path), env=envv, **run)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(next(ln for ln in r.stdout.splitlines() if ln.startswith("RESULT "))[7:])
    site = str(venv / "lib")
    assert out["package"].startswith(site), out  # the installed copy, not the checkout
    assert out["source"] == "shipped" and out["db"].startswith(site) and out["db"].endswith(key), out
    assert out["loaded"] > 0
    assert out["tuning"]["db"] == out["db"] and out["tuning"]["applied"] >= 1, out["tuning"]
    assert out["files_after"] == out["files"] == [RECORDS, WORKLOADS]  # nothing written into site-packages
