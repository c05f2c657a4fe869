"""A real one-node Slurm cluster for the tests: munge, MariaDB, slurmdbd, slurmctld and slurmd,
everything under one folder, every daemon started in the foreground, backgrounded, and stopped by
the PID recorded here.

Debian's packages (``slurmctld slurmd slurm-client munge slurmdbd mariadb-server``; ``.ci/run``
installs them) give Slurm 22.05, whose ``sacct`` answers only through slurmdbd (hence MariaDB).
No systemd or cgroups: ``ProctrackType=proctrack/linuxproc``, ``TaskPlugin=task/none``.  Requeues
are fast (``AuthInfo=cred_expire=5``, ``sched_interval=2``): with the defaults a requeued job
waits two minutes.

    cluster = SlurmCluster.start(folder)   # raises ClusterUnavailable with the reason
    os.environ.update(cluster.env)          # SLURM_CONF for sbatch, sacct, submitit
    cluster.stop()
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

PACKAGES = ("slurmctld", "slurmd", "sbatch", "sacct", "sacctmgr", "slurmdbd", "munged", "mariadbd",
            "mariadb-install-db")


class ClusterUnavailable(RuntimeError):
    """Slurm cannot start here (packages missing, not root, a daemon that does not come up)."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid: int) -> bool:
    """Running and not a zombie (a zombie still answers ``kill -0``)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


@dataclass
class SlurmCluster:
    root: Path
    node: str
    partition: str = "debug"
    pids: dict[str, int] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.root / "etc" / "slurm.conf")}

    # -- start ----------------------------------------------------------------------------
    @classmethod
    def start(cls, root: Path) -> "SlurmCluster":
        missing = [p for p in PACKAGES if shutil.which(p) is None]
        if missing:
            raise ClusterUnavailable(f"not installed: {', '.join(missing)} (apt-get install slurmctld slurmd "
                                     f"slurm-client munge slurmdbd mariadb-server)")
        if os.geteuid() != 0:
            raise ClusterUnavailable("the test cluster runs its daemons as root")
        cluster = cls(root=Path(root), node=socket.gethostname().split(".")[0])
        try:
            cluster._start()
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def _spawn(self, name: str, argv: list[str], **kw) -> None:
        log = open(self.root / "log" / f"{name}.out", "ab")
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, **self.env}, **kw)
        self.pids[name] = proc.pid

    def _wait(self, what: str, ready, timeout: float = 60.0) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if ready():
                return
            dead = [n for n, pid in self.pids.items() if not _alive(pid)]
            if dead:
                break
            time.sleep(0.2)
        logs = "".join(f"\n--- {p.name}\n" + p.read_text(errors="replace")[-1500:]
                       for p in sorted((self.root / "log").glob("*")))
        raise ClusterUnavailable(f"{what} did not come up within {timeout:.0f} s{logs}")

    def _run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        res = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **self.env}, timeout=60)
        if check and res.returncode != 0:
            raise ClusterUnavailable(f"{' '.join(argv)}: {res.stderr.strip() or res.stdout.strip()}")
        return res

    def _start(self) -> None:
        for sub in ("etc", "log", "munge", "state", "spool", "run"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self._munge()
        self._mariadb()
        self._configs()
        self._spawn("slurmdbd", ["slurmdbd", "-D"])
        self._wait("slurmdbd", lambda: self._run("sacctmgr", "-n", "list", "cluster", check=False).returncode == 0)
        self._run("sacctmgr", "-i", "add", "cluster", "flopsfit", check=False)
        self._spawn("slurmctld", ["slurmctld", "-D", "-i"])
        self._wait("slurmctld", lambda: self._run("sinfo", "-h", check=False).returncode == 0)
        self._spawn("slurmd", ["slurmd", "-D", "-N", self.node])
        self._wait("slurmd", lambda: self._run("sinfo", "-h", "-o", "%T", check=False).stdout.strip()
                   in ("idle", "mixed", "allocated"))
        self._wait("sacct", lambda: self._run("sacct", "-n", "-X", check=False).returncode == 0)

    def _munge(self) -> None:
        # Slurm's commands talk to munged at its default socket whatever AuthInfo says: /run/munge
        Path("/run/munge").mkdir(parents=True, exist_ok=True)
        self.munge_socket = Path("/run/munge/munge.socket.2")
        if self.munge_socket.exists():
            if self._run("munge", "-n", f"--socket={self.munge_socket}", check=False).returncode == 0:
                return  # a live munged: Slurm's daemons and commands all use it, whatever its key
            # a socket left by a munged that died without removing it: --force below replaces it
        key = self.root / "munge" / "munge.key"
        self._run("mungekey", "--create", f"--keyfile={key}")
        os.chmod(key, 0o600)
        self._spawn("munged", ["munged", "--foreground", "--force", f"--key-file={key}",
                               f"--socket={self.munge_socket}", f"--pid-file={self.root / 'munge' / 'munged.pid'}",
                               f"--log-file={self.root / 'log' / 'munged.log'}",
                               f"--seed-file={self.root / 'munge' / 'munged.seed'}"])
        self._wait("munged", lambda: self._run("munge", "-n", f"--socket={self.munge_socket}",
                                               check=False).returncode == 0)

    def _mariadb(self) -> None:
        # mysql must reach its data directory: not under pytest's folders (mode 0700, root's)
        data = self.db_dir = Path(tempfile.mkdtemp(prefix="flops-fit-mariadb-"))
        shutil.chown(data, "mysql", "mysql")
        self._run("mariadb-install-db", "--user=mysql", f"--datadir={data}", "--skip-test-db",
                  "--auth-root-authentication-method=socket")
        self.db_port = _free_port()
        init = data / "init.sql"
        init.write_text("CREATE USER IF NOT EXISTS 'slurm'@'%' IDENTIFIED BY 'slurm';\n"
                        "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'%';\nFLUSH PRIVILEGES;\n")
        shutil.chown(init, "mysql", "mysql")
        # mysql owns its pid, log and socket: they live in its data directory (errno 13 elsewhere)
        self._spawn("mariadbd", ["mariadbd", "--user=mysql", f"--datadir={data}", f"--socket={data / 'mysqld.sock'}",
                                 f"--pid-file={data / 'mysqld.pid'}", f"--log-error={data / 'error.log'}",
                                 "--bind-address=127.0.0.1", f"--port={self.db_port}", "--skip-name-resolve",
                                 f"--init-file={init}"])
        self._wait("mariadbd", lambda: (data / "mysqld.sock").exists(), timeout=60)

    def _configs(self) -> None:
        etc = self.root / "etc"
        self.dbd_port, ctld_port, slurmd_port = _free_port(), _free_port(), _free_port()
        cpus = os.cpu_count() or 1
        dbd = etc / "slurmdbd.conf"
        dbd.write_text("\n".join([
            "AuthType=auth/munge", "DbdHost=localhost", f"DbdPort={self.dbd_port}",
            "SlurmUser=root", f"PidFile={self.root / 'run' / 'slurmdbd.pid'}",
            f"LogFile={self.root / 'log' / 'slurmdbd.log'}", "StorageType=accounting_storage/mysql",
            "StorageHost=127.0.0.1", f"StoragePort={self.db_port}", "StorageUser=slurm", "StoragePass=slurm",
            "StorageLoc=slurm_acct_db", ""]))
        os.chmod(dbd, 0o600)
        (etc / "slurm.conf").write_text("\n".join([
            "ClusterName=flopsfit", f"SlurmctldHost={self.node}(127.0.0.1)", f"SlurmctldPort={ctld_port}",
            f"SlurmdPort={slurmd_port}", "SlurmUser=root", "SlurmdUser=root", "AuthType=auth/munge",
            "AuthInfo=cred_expire=5", "CredType=cred/munge", "MpiDefault=none",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "ReturnToService=2",
            "SchedulerType=sched/backfill", "SchedulerParameters=sched_interval=2,bf_interval=2",
            "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core",
            f"StateSaveLocation={self.root / 'state'}", f"SlurmdSpoolDir={self.root / 'spool'}",
            f"SlurmctldPidFile={self.root / 'run' / 'slurmctld.pid'}",
            f"SlurmdPidFile={self.root / 'run' / 'slurmd.pid'}",
            f"SlurmctldLogFile={self.root / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={self.root / 'log' / 'slurmd.log'}",
            "AccountingStorageType=accounting_storage/slurmdbd", "AccountingStorageHost=localhost",
            f"AccountingStoragePort={self.dbd_port}", "JobAcctGatherType=jobacct_gather/none",
            "JobCompType=jobcomp/none", "MinJobAge=2", "KillWait=5", "InactiveLimit=0",
            f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN",
            f"PartitionName={self.partition} Nodes={self.node} Default=YES MaxTime=INFINITE State=UP", ""]))

    # -- stop -----------------------------------------------------------------------------
    def stop(self) -> None:
        """SIGTERM to every daemon started here (the newest first), SIGKILL to any left after 10 s."""
        order = [n for n in ("slurmd", "slurmctld", "slurmdbd", "mariadbd", "munged") if n in self.pids]
        for name in order:
            try:
                os.kill(self.pids[name], signal.SIGTERM)
            except ProcessLookupError:
                pass
            deadline = time.time() + 10
            while _alive(self.pids[name]) and time.time() < deadline:
                time.sleep(0.1)
            if _alive(self.pids[name]):
                os.kill(self.pids[name], signal.SIGKILL)
        for name in order:  # reap what we started
            try:
                os.waitpid(self.pids[name], os.WNOHANG)
            except ChildProcessError:
                pass
        if getattr(self, "db_dir", None) is not None:
            shutil.rmtree(self.db_dir, ignore_errors=True)
