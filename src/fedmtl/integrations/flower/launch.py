"""Start a Flower federation of real processes on this machine: a SuperLink, N SuperNodes, ``flwr run``.

Used by the tests, the benchmark and ``fedmtl flower local``. Every process is started with a
marker in its environment and a hard time limit; :meth:`LocalFederation.stop` kills each process
it started and their descendants (Flower detaches its SuperExec helpers into new sessions, so
they are found through ``/proc`` by that marker, never by name).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MARKER = "FEDMTL_FLOWER_SESSION"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def machine_slowness() -> float:
    """How many times slower than an idle machine this one runs now (at least 1).

    The run queue per core (1-minute load average / cores): on a machine shared by other work every
    wait here is stretched by it, so a loaded machine makes a federation slower, never a wait time out.
    """
    return max(1.0, os.getloadavg()[0] / (os.cpu_count() or 1))


def _bin(name: str) -> str:
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else name


@dataclass(frozen=True)
class Certificates:
    ca: Path
    cert: Path
    key: Path


def generate_certificates(
    folder: str | Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost"), days: int = 30
) -> Certificates:
    """A throw-away CA and a server certificate for ``hosts`` (PEM files in ``folder``).

    For a real deployment use certificates from your own CA; the SuperLink needs ``--ssl-ca-certfile``,
    ``--ssl-certfile`` and ``--ssl-keyfile``, the SuperNodes and ``flwr`` the CA as root certificate.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedmtl test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for h in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    out = Certificates(folder / "ca.crt", folder / "server.pem", folder / "server.key")
    out.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    out.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    out.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    os.chmod(out.key, 0o600)
    return out


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as fh:
                out += [int(x) for x in fh.read().split()]
    except OSError:
        pass
    return out


def descendants(pid: int) -> list[int]:
    todo, seen = [pid], []
    while todo:
        p = todo.pop()
        for c in _children(p):
            if c not in seen:
                seen.append(c)
                todo.append(c)
    return seen


def marked_pids(session: str) -> list[int]:
    """Processes (of this user) whose environment carries ``MARKER=session``."""
    needle = f"{MARKER}={session}".encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as fh:
                if needle in fh.read().split(b"\0"):
                    found.append(int(name))
        except OSError:
            continue
    return found


def _kill(pids: list[int], sig: int = signal.SIGKILL) -> None:
    for p in pids:
        try:
            os.kill(p, sig)
        except (ProcessLookupError, PermissionError):
            pass


@dataclass
class LocalFederation:
    """A SuperLink and ``num_nodes`` SuperNodes on this machine, as processes, cleaned up on exit.

    By default everything listens on 127.0.0.1. ``server_host`` and ``node_hosts`` put the SuperLink and
    each SuperNode (its Runtime API, and its warm ClientApp's connection to it) on other loopback addresses
    (127.0.0.2, ...): each stands for a machine, the certificates name the server's address, and the
    nodes reach the SuperLink only through that address, as in docs/deployment.md's multi-machine procedure.

    Args:
        workdir: logs, certificates, Flower's home (``FLWR_HOME``) and the node caches go here.
        num_nodes: SuperNodes to start; node ``i`` gets ``--node-config 'partition-id=i num-partitions=N'``.
        tls: generate certificates and run the SuperLink with TLS (the nodes verify it with the CA).
        time_limit: every process is started under ``timeout`` with this many seconds.
        num_partitions: ``num-partitions`` for the nodes (default ``num_nodes``).
        warm: run each SuperNode with ``--isolation process`` and one warm ClientApp process beside it
            (:mod:`fedmtl.integrations.flower.worker`); False: Flower's default, a fresh process per message.
        idle_poll: start the SuperNodes through :mod:`fedmtl.integrations.flower.supernode` with this
            ``--idle-poll`` (seconds between a node's looks for work; Flower's own is 3 s). None: stock.
    """

    workdir: Path
    num_nodes: int = 3
    tls: bool = True
    time_limit: float = 600.0
    num_partitions: int | None = None
    warm: bool = True
    idle_poll: float | None = None
    server_host: str = "127.0.0.1"
    node_hosts: tuple[str, ...] = ("127.0.0.1",)
    env_extra: Mapping[str, str] = field(default_factory=dict)
    session: str = field(default_factory=lambda: uuid.uuid4().hex)
    port: int = 0
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    certs: Certificates | None = None

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.home = self.workdir / "flwr-home"

    # -- environment ----------------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        src = str(Path(__file__).resolve().parents[3])  # the fedmtl source this module comes from
        env["PYTHONPATH"] = os.pathsep.join(
            [src] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        )
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        env["FLWR_HOME"] = str(self.home)
        env["FEDMTL_FLOWER_CACHE"] = str(self.workdir / "cache")
        env[MARKER] = self.session
        env.setdefault("OMP_NUM_THREADS", "1")
        env.update(self.env_extra)
        return env

    def _start(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.workdir / f"{name}.log", "ab")
        cmd = ["timeout", "-s", "KILL", str(int(self.time_limit)), *args]
        proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env(),
            cwd=self.workdir,
            start_new_session=True,
        )
        self.procs[name] = proc
        return proc

    @property
    def address(self) -> str:
        return f"{self.server_host}:{self.port}"

    # -- processes ------------------------------------------------------------------------------
    def start_superlink(self) -> None:
        self.port = self.port or free_port(self.server_host)
        args = [
            _bin("flower-superlink"),
            "--host",
            self.server_host,
            "--port",
            str(self.port),
            "--disable-runtime-dependency-installation",
        ]
        if self.tls:
            self.certs = self.certs or generate_certificates(self.workdir / "certs", (self.server_host, "localhost"))
            args += [
                "--ssl-ca-certfile",
                str(self.certs.ca),
                "--ssl-certfile",
                str(self.certs.cert),
                "--ssl-keyfile",
                str(self.certs.key),
            ]
        else:
            args.append("--insecure")
        self._start("superlink", args)
        self._wait_port(self.server_host, self.port, 60.0 * machine_slowness(), "superlink")
        self.write_flower_config()

    def node_host(self, index: int) -> str:
        """The loopback address standing for node ``index``'s machine."""
        return self.node_hosts[index % len(self.node_hosts)]

    def start_supernode(self, index: int) -> None:
        host = self.node_host(index)
        port = free_port(host)
        n = self.num_partitions or self.num_nodes
        launcher = [_bin("flower-supernode")]
        if self.idle_poll is not None:
            launcher = [sys.executable, "-m", "fedmtl.integrations.flower.supernode", "--idle-poll", str(self.idle_poll)]
        args = [
            *launcher,
            "--superlink",
            self.address,
            "--host",
            host,
            "--port",
            str(port),
            "--node-config",
            f"partition-id={index} num-partitions={n}",
            "--max-wait-time",
            "60",
        ]
        if self.tls:
            assert self.certs is not None
            args += ["--root-certificates", str(self.certs.ca)]
        else:
            args.append("--insecure")
        if self.warm:
            args += ["--isolation", "process"]
        node = self._start(f"supernode-{index}", args)
        if self.warm:
            worker = [sys.executable, "-m", "fedmtl.integrations.flower.worker"]
            worker += ["--runtime-api-address", f"{host}:{port}", "--parent-pid", str(node.pid)]
            self._start(f"worker-{index}", worker)

    def start(self) -> LocalFederation:
        self.start_superlink()
        for i in range(self.num_nodes):
            self.start_supernode(i)
        return self

    def _wait_port(self, host: str, port: int, timeout: float, name: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = self.procs[name]
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{name} exited with {proc.returncode}; see {self.workdir / (name + '.log')}"
                )
            with socket.socket() as s:
                if s.connect_ex((host, port)) == 0:
                    return
            time.sleep(0.2)
        raise TimeoutError(f"{name} did not open port {port} within {timeout:.0f} s")

    def write_flower_config(self) -> Path:
        """``$FLWR_HOME/config.toml`` with a connection named ``fedmtl`` to this SuperLink."""
        self.home.mkdir(parents=True, exist_ok=True)
        lines = ["[superlink]", 'default = "fedmtl"', "", "[superlink.fedmtl]", f'address = "{self.address}"']
        if self.tls:
            assert self.certs is not None
            lines.append(f'root-certificates = "{self.certs.ca}"')
        else:
            lines.append("insecure = true")
        path = self.home / "config.toml"
        path.write_text("\n".join(lines) + "\n")
        return path

    def submit(
        self, app_dir: str | Path, run_config: Mapping[str, Any] | None = None, timeout: float = 120.0
    ) -> int:
        """``flwr run <app_dir> fedmtl`` with run-config overrides; returns the run id.

        ``timeout`` is for an idle machine; it is stretched by :func:`machine_slowness`.
        """
        args = [_bin("flwr"), "run", str(app_dir), "fedmtl", "--format", "json"]
        if run_config:
            args += ["--run-config", " ".join(f"{k}={_toml(v)}" for k, v in run_config.items())]
        res = subprocess.run(
            args, capture_output=True, env=self.env(), timeout=timeout * machine_slowness(), cwd=self.workdir
        )
        out = res.stdout.decode()
        try:
            data = json.loads(out[out.index("{") :])
        except ValueError:
            raise RuntimeError(f"flwr run failed ({res.returncode}): {out}\n{res.stderr.decode()}") from None
        if not data.get("success", False):
            raise RuntimeError(f"flwr run failed: {data}")
        return int(data["run-id"])

    def run_log(self, run_id: int, timeout: float = 30.0) -> str:
        """The run's logs as the SuperLink keeps them (``flwr log <run-id> fedmtl --show``)."""
        try:
            res = subprocess.run(
                [_bin("flwr"), "log", str(run_id), "fedmtl", "--show"],
                capture_output=True,
                env=self.env(),
                timeout=timeout * machine_slowness(),
                cwd=self.workdir,
            )
        except subprocess.TimeoutExpired:
            return "(flwr log timed out)"
        return res.stdout.decode(errors="replace") + res.stderr.decode(errors="replace")

    def run_ended(self, run_id: int) -> str:
        """``"status: details"`` once the run has finished (completed, failed or stopped), else ``""``."""
        try:
            res = subprocess.run(
                [_bin("flwr"), "ls", "fedmtl", "--run-id", str(run_id), "--format", "json"],
                capture_output=True,
                env=self.env(),
                timeout=60 * machine_slowness(),
                cwd=self.workdir,
            )
            out = res.stdout.decode()
            run = json.loads(out[out.index("{") :])["runs"][0]
        except (subprocess.TimeoutExpired, ValueError, KeyError, IndexError):
            return ""  # not known yet: ask again later
        status = str(run.get("status", ""))
        return f"{status}: {run.get('status-details', '')}" if status.startswith("finished") else ""

    def kill_node(self, index: int) -> None:
        """SIGKILL a SuperNode, everything it started and its warm ClientApp process: a machine that dies."""
        for name in (f"supernode-{index}", f"worker-{index}"):
            proc = self.procs.get(name)
            if proc is None:
                continue
            _kill([proc.pid, *descendants(proc.pid)])
            proc.wait(timeout=10 * machine_slowness())

    def stop(self) -> None:
        """Kill every process of this federation (and their descendants), then wait for them."""
        pids: list[int] = []
        for proc in self.procs.values():
            pids += [proc.pid, *descendants(proc.pid)]
        pids += marked_pids(self.session)
        _kill(sorted(set(pids)))
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        for _ in range(20):  # detached helpers may take a moment to die
            left = marked_pids(self.session)
            if not left:
                break
            _kill(left)
            time.sleep(0.1)

    def log(self, name: str) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def __enter__(self) -> LocalFederation:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))


def activity(root: Path) -> int:
    """Bytes written under ``root`` so far (process logs, run folders): grows while a federation works."""
    total = 0
    for path in root.rglob("*"):
        try:
            total += path.stat().st_size if path.is_file() else 0
        except OSError:  # a file replaced while we looked
            pass
    return total


def wait_until(
    predicate: Callable[[], bool],
    quiet: float,
    watch: Path,
    poll: float = 0.5,
    ended: Callable[[], str] | None = None,
    check_every: float = 10.0,
) -> bool:
    """Wait for ``predicate``: True when it holds, False once nothing under ``watch`` has been written for
    ``quiet`` seconds (stretched by :func:`machine_slowness`, read afresh at every poll), or once ``ended()``
    (asked every ``check_every`` s, e.g. :meth:`LocalFederation.run_ended`) says the run is over without it.

    There is no overall deadline: a federation that keeps working (logs, metrics) is slow, not stuck,
    so a loaded machine makes the wait longer, never failed; a hung one fails after ``quiet`` silent seconds.
    """
    seen, last_change, last_check = -1, time.monotonic(), time.monotonic()
    while True:
        if predicate():
            return True
        if ended is not None and time.monotonic() - last_check > check_every:
            last_check = time.monotonic()
            if ended():
                return predicate()
        now = activity(watch)
        if now != seen:
            seen, last_change = now, time.monotonic()
        elif time.monotonic() - last_change > quiet * machine_slowness():
            return predicate()
        time.sleep(poll)


def copy_app(template: str | Path, dest: str | Path, experiment: str | None = None) -> Path:
    """Copy an app folder (e.g. ``examples/flower_app``), optionally with another experiment YAML."""
    dest = Path(dest)
    shutil.copytree(template, dest, ignore=shutil.ignore_patterns("runs", "__pycache__"), dirs_exist_ok=True)
    if experiment is not None:
        (dest / "experiment.yaml").write_text(experiment)
    return dest


__all__ = [
    "Certificates",
    "LocalFederation",
    "copy_app",
    "descendants",
    "free_port",
    "generate_certificates",
    "machine_slowness",
    "activity",
    "wait_until",
]
