"""The project installs where it has never been (issue 9).

- git tracks nothing generated (`.ci/check-tracked`, which CI runs first);
- a non-editable install into a virtualenv at a temporary path gives working
  ``twistd mcp2p`` and ``mcp2p`` commands, with the example config inside,
  and no lab (it runs from a checkout; every module installed imports);
- the systemd unit verifies;
- the suite collects without the lab extras.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import venv
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECK = ROOT / ".ci" / "check-tracked"
UNIT = ROOT / "etc" / "mcp2p.service"


def _git(*args: str, cwd: Path) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout


def _in_git_checkout() -> bool:
    return shutil.which("git") is not None and (ROOT / ".git").exists()


needs_git = pytest.mark.skipif(not _in_git_checkout(), reason="not a git checkout")


@needs_git
def test_this_checkout_tracks_no_build_output() -> None:
    cp = subprocess.run(["bash", str(CHECK)], cwd=ROOT, capture_output=True, text=True)
    assert cp.returncode == 0, cp.stderr


@needs_git
@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python3",
        "build/lib/mcp2p/app.py",
        "dist/mcp2p-0.1.0.tar.gz",
        "mcp2p/__pycache__/app.cpython-311.pyc",
        "mcp2p.egg-info/PKG-INFO",
        "twisted/plugins/dropin.cache",
    ],
)
def test_check_tracked_fails_on_a_commit_that_adds_build_output(tmp_path: Path, path: str) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    _git("init", "-q", cwd=repo)
    (repo / ".ci").mkdir()
    shutil.copy(CHECK, repo / ".ci" / "check-tracked")
    (repo / "README.md").write_text("x\n")
    _git("add", ".", cwd=repo)
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t"}
    env["GIT_COMMITTER_EMAIL"] = "t@t"
    subprocess.run(
        ["git", "commit", "-qm", "clean"], cwd=repo, check=True, env={**os.environ, **env}
    )
    ok = subprocess.run(["bash", ".ci/check-tracked"], cwd=repo, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr

    target = repo / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(b"generated\n")
    _git("add", "-f", path, cwd=repo)
    subprocess.run(
        ["git", "commit", "-qm", "oops"], cwd=repo, check=True, env={**os.environ, **env}
    )
    bad = subprocess.run(["bash", ".ci/check-tracked"], cwd=repo, capture_output=True, text=True)
    assert bad.returncode == 1
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and path in lines[0] and "git rm -r --cached" in lines[0]


def _source_copy(dest: Path) -> Path:
    """The project's tracked files (or, outside git, its tree without generated
    directories), so that the install builds nothing inside this checkout."""
    if _in_git_checkout():
        files = _git("ls-files", "-z", cwd=ROOT).split("\0")
        for name in filter(None, files):
            src = ROOT / name
            if not src.exists() and not src.is_symlink():
                continue  # deleted in the work tree, not yet committed
            out = dest / name
            out.parent.mkdir(parents=True, exist_ok=True)
            if src.is_symlink():
                out.symlink_to(os.readlink(src))
            else:
                shutil.copy2(src, out)
        return dest
    ignore = shutil.ignore_patterns(".venv", "build", "dist", "*.egg-info", "__pycache__")
    shutil.copytree(ROOT, dest, ignore=ignore, symlinks=True)
    return dest


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A virtualenv at a fresh temporary path with mcp2p installed, not editable."""
    base = tmp_path_factory.mktemp("fresh-install")
    src = _source_copy(base / "src")
    env_dir = base / "venv"
    venv.create(env_dir, with_pip=True)
    cp = subprocess.run(
        [str(env_dir / "bin" / "python"), "-m", "pip", "install", "-q", "--no-input", str(src)],
        capture_output=True,
        text=True,
        timeout=540,
    )
    if cp.returncode != 0:
        pytest.fail("pip install . failed:\n" + cp.stdout[-3000:] + cp.stderr[-3000:])
    shutil.rmtree(src)  # nothing may still point into the source tree
    yield env_dir


def _run(env_dir: Path, *argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(
        [str(env_dir / "bin" / argv[0]), *argv[1:]],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env={**clean, "MCP2P_CONFIG": ""},
    )


def test_installed_scripts_run_their_own_interpreter(installed: Path) -> None:
    for script in ("twistd", "mcp2p"):
        first = (installed / "bin" / script).read_text().splitlines()[0]
        assert first == f"#!{installed / 'bin' / 'python'}", first


def test_installed_twistd_finds_the_plugin(installed: Path, tmp_path: Path) -> None:
    cp = _run(installed, "twistd", "mcp2p", "--help", cwd=tmp_path)
    assert cp.returncode == 0, cp.stderr
    assert "--config" in cp.stdout and "--state-dir" in cp.stdout
    listed = _run(installed, "twistd", "--help", cwd=tmp_path)
    assert "Multicast peer-to-peer file sharing node" in listed.stdout


def test_installed_cli_says_its_version(installed: Path, tmp_path: Path) -> None:
    from mcp2p import __version__

    cp = _run(installed, "mcp2p", "--version", cwd=tmp_path)
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.strip() == f"mcp2p {__version__}"


def test_installed_product_leaves_the_lab_out_and_every_module_imports(
    installed: Path, tmp_path: Path
) -> None:
    """The lab runs from a checkout (issue 13): the wheel carries no
    mcp2p/lab, and every module it does carry imports without it."""
    [site] = installed.glob("lib/python*/site-packages")
    assert (site / "mcp2p" / "app.py").is_file()
    assert not (site / "mcp2p" / "lab").exists()
    probe = textwrap.dedent(
        """
        import importlib, importlib.metadata, importlib.util, pkgutil, sys
        import mcp2p
        lab = [f for f in importlib.metadata.files("mcp2p") if str(f).startswith("mcp2p/lab")]
        assert not lab, lab
        assert importlib.util.find_spec("mcp2p.lab") is None
        names = [m.name for m in pkgutil.walk_packages(mcp2p.__path__, "mcp2p.")]
        for name in names:
            if not name.endswith("__main__"):  # runs the CLI on import
                importlib.import_module(name)
        print(len(names), mcp2p.__file__)
        """
    )
    cp = _run(installed, "python", "-c", probe, cwd=tmp_path)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    count, where = cp.stdout.split()
    assert int(count) > 50 and where.startswith(str(site)), cp.stdout


def test_installed_package_carries_the_example_config(installed: Path, tmp_path: Path) -> None:
    cp = _run(installed, "mcp2p", "config", "--example", "--raw", cwd=tmp_path)
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout == (ROOT / "etc" / "mcp2p.ini").read_text()


def test_installed_node_starts_on_the_example_config(installed: Path, tmp_path: Path) -> None:
    """The example config, made absolute for this temporary root, runs a node."""
    state = tmp_path / "state"
    example = _run(
        installed,
        "mcp2p",
        "config",
        "--example",
        "--state-dir",
        str(state),
        "--share",
        str(tmp_path / "share"),
        "--download-dir",
        str(tmp_path / "downloads"),
        "--plugins-dir",
        str(tmp_path / "plugins"),
        cwd=tmp_path,
    )
    assert example.returncode == 0, example.stderr
    ini = tmp_path / "mcp2p.ini"
    ini.write_text(example.stdout)
    from tests.nodes import free_udp_port

    overrides = [
        "--set",
        f"discovery.query_port={free_udp_port()}",
        "--set",
        f"sap.port={free_udp_port()}",
        "--set",
        "api.port=0",
        "--set",
        "serving.control_port=0",
    ]
    log = open(tmp_path / "twistd.log", "wb")
    proc = subprocess.Popen(
        [str(installed / "bin" / "twistd"), "-n", "--pidfile=", "mcp2p", "--config", str(ini)]
        + overrides,
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        import time

        deadline = time.monotonic() + 30
        while not (state / "api.port").exists():
            assert proc.poll() is None, (tmp_path / "twistd.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "twistd.log").read_text()
            time.sleep(0.05)
        status = _run(installed, "mcp2p", "--config", str(ini), "status", cwd=tmp_path)
        assert status.returncode == 0, status.stderr
        assert '"node_id"' in status.stdout
    finally:
        proc.terminate()
        # twistd stops its services, then dies of the SIGTERM it re-raises.
        assert proc.wait(timeout=20) in (0, -signal.SIGTERM), (tmp_path / "twistd.log").read_text()
        log.close()
    assert "Main loop terminated." in (tmp_path / "twistd.log").read_text()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is missing")
def test_systemd_unit_verifies(installed: Path, tmp_path: Path) -> None:
    # The unit names /opt/mcp2p; point it at this install so that the command exists.
    unit = tmp_path / "mcp2p.service"
    unit.write_text(UNIT.read_text().replace("/opt/mcp2p/", f"{installed}/"))
    cp = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cp.returncode == 0, cp.stderr
    assert cp.stderr.strip() == "", cp.stderr


def test_systemd_unit_runs_twistd_unprivileged_and_hardened() -> None:
    import configparser

    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    service = parser["Service"]
    assert service["ExecStart"].split()[1:] == [
        "-n",
        "--pidfile=",
        "mcp2p",
        "--config",
        "/etc/mcp2p/mcp2p.ini",
    ]
    assert service["User"] == "mcp2p" and service["StateDirectory"] == "mcp2p"
    assert service["Restart"] == "on-failure"
    for key, value in {
        "ProtectSystem": "strict",
        "NoNewPrivileges": "yes",
        "PrivateTmp": "yes",
        "CapabilityBoundingSet": "",
    }.items():
        assert service[key] == value, key


def test_suite_collects_without_the_lab_extras(tmp_path: Path) -> None:
    """networkx, matplotlib and pyroute2 are lab extras: with them unimportable
    the suite still collects (the modules that need them skip with a reason)."""
    blocker = tmp_path / "sitecustomize.py"
    blocker.write_text(
        textwrap.dedent(
            """
            import importlib.abc, sys
            class Block(importlib.abc.MetaPathFinder):
                def find_spec(self, name, path=None, target=None):
                    if name.split(".")[0] in ("networkx", "matplotlib", "pyroute2"):
                        raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
                    return None
            sys.meta_path.insert(0, Block())
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    cp = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert cp.returncode == 0, cp.stdout[-4000:] + cp.stderr[-2000:]
    assert "error" not in cp.stdout.splitlines()[-1].lower(), cp.stdout[-2000:]
