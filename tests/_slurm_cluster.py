"""A throwaway single-node Slurm cluster on this machine, for the Slurm tests.

`start_cluster(root)` starts munged (its own key and socket under `root`), slurmctld and slurmd
with a generated `slurm.conf` (real CPU count and memory, all state, spool, logs and pid files
under `root`, free TCP ports), waits until the node is idle and yields a `SlurmCluster`; on exit it
cancels every job of that cluster, waits for them to end and stops the three daemons by PID.
Clients find the cluster through `SLURM_CONF`, which `SlurmCluster.env` carries; nothing under
/etc or /run is touched.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

DAEMONS = ("munged", "mungekey", "slurmctld", "slurmd", "slurmstepd")
CLIENTS = ("sbatch", "squeue", "scontrol", "scancel", "sinfo", "srun")
FINAL_STATES = frozenset(
    {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}
)


def missing_binaries() -> list[str]:
    """Names of the munge/Slurm programs this machine lacks (empty when a cluster can start)."""
    search_path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin:/usr/bin"
    return [name for name in DAEMONS + CLIENTS if shutil.which(name, path=search_path) is None]


def _binary(name: str) -> str:
    found = shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    if found is None:
        raise FileNotFoundError(f"{name} not found; install Debian's slurmctld slurmd slurm-client munge")
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _real_memory_mb() -> int:
    """MemTotal minus 10%, in MB: slurmd drains a node that has less memory than configured."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(int(line.split()[1]) / 1024 * 0.9)
    raise RuntimeError("no MemTotal in /proc/meminfo")


def slurm_conf_text(root: Path, node: str, cpus: int, memory_mb: int, ports: tuple[int, int]) -> str:
    """The slurm.conf of a one-node cluster whose every file lives under `root`."""
    ctld_port, slurmd_port = ports
    return f"""\
ClusterName=mvmtest
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge/munge.socket.2
SlurmUser=root
SlurmdUser=root
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=2
ReturnToService=2
JobRequeue=1
SlurmctldTimeout=300
SlurmdTimeout=300
MessageTimeout=60
InactiveLimit=0
KillWait=5
MinJobAge=3600
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


@dataclass(frozen=True)
class SlurmCluster:
    """A running test cluster: `env` points Slurm clients at it through SLURM_CONF."""

    root: Path
    """Folder holding slurm.conf, state, spool, logs and the munge key/socket."""
    node: str
    """The one node's name (this machine's short host name)."""
    env: Mapping[str, str]
    """os.environ plus SLURM_CONF; pass it to every client call."""

    def run(self, *args: str, env: Mapping[str, str] | None = None, check: bool = True) -> str:
        """Run a Slurm client (`sbatch`, `scontrol`, ...) against this cluster; its stdout."""
        done = subprocess.run(
            args, env={**self.env, **(env or {})}, capture_output=True, text=True, timeout=120
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
        return done.stdout

    def job_field(self, job_id: str, field: str) -> str:
        """One `Field=value` of `scontrol show job` (the first task's, for an array)."""
        shown = self.run("scontrol", "-o", "show", "job", job_id)
        for line in shown.splitlines():
            for item in line.split():
                key, _, value = item.partition("=")
                if key == field:
                    return value
        raise KeyError(f"{field} not in scontrol output for job {job_id}")

    def job_states(self, job_id: str) -> list[str]:
        """JobState of the job, or of each task when `job_id` is an array job."""
        shown = self.run("scontrol", "-o", "show", "job", job_id)
        return [item.partition("=")[2] for item in shown.split() if item.startswith("JobState=")]

    def wait(self, job_ids: list[str], timeout_s: float) -> dict[str, list[str]]:
        """Wait until every job (every array task) is in a final state; their states."""
        deadline = time.monotonic() + timeout_s
        while True:
            states = {job_id: self.job_states(job_id) for job_id in job_ids}
            if all(s and set(s) <= FINAL_STATES for s in states.values()):
                return states
            if time.monotonic() > deadline:
                raise TimeoutError(f"jobs not finished after {timeout_s:.0f}s: {states}\n{self.logs()}")
            time.sleep(0.5)

    def logs(self) -> str:
        """The tail of the daemons' logs, for failure messages."""
        tails = []
        for name in ("slurmctld.log", "slurmd.log"):
            path = self.root / "log" / name
            if path.exists():
                tails.append(f"--- {name}\n" + "\n".join(path.read_text().splitlines()[-20:]))
        return "\n".join(tails)


def _start(args: list[str], log: Path) -> subprocess.Popen:
    with log.open("ab") as sink:
        return subprocess.Popen(args, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def _start_munged(root: Path) -> subprocess.Popen:
    munge_dir = root / "munge"
    munge_dir.mkdir(mode=0o700)
    key = munge_dir / "munge.key"
    subprocess.run([_binary("mungekey"), "--create", f"--keyfile={key}"], check=True, capture_output=True)
    key.chmod(0o600)
    process = _start(
        [
            _binary("munged"),
            "--foreground",
            "--force",
            f"--socket={munge_dir}/munge.socket.2",
            f"--key-file={key}",
            f"--log-file={root}/log/munged.log",
            f"--pid-file={munge_dir}/munged.pid",
            f"--seed-file={munge_dir}/munged.seed",
        ],
        root / "log" / "munged.out",
    )
    _wait_for(lambda: (munge_dir / "munge.socket.2").exists(), 20, "munged socket", process)
    return process


def _wait_for(ready, timeout_s: float, what: str, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what}: process exited with {process.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready after {timeout_s:.0f}s")
        time.sleep(0.3)


def _node_idle(cluster: SlurmCluster) -> bool:
    done = subprocess.run(
        ["sinfo", "-h", "-N", "-o", "%t"], env=dict(cluster.env), capture_output=True, text=True, timeout=30
    )
    return done.returncode == 0 and done.stdout.strip() == "idle"


def _cancel_all(cluster: SlurmCluster) -> None:
    """Cancel every job of this cluster and wait (bounded) until none runs."""
    with contextlib.suppress(Exception):
        cluster.run("scancel", "--full", "--user", "root", check=False)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            active = cluster.run("squeue", "-h", "-t", "PD,R,CG,S,CF,RQ", "-o", "%i", check=False)
            if not active.strip():
                return
            time.sleep(0.5)


@contextlib.contextmanager
def start_cluster(root: Path) -> Iterator[SlurmCluster]:
    """Start munged, slurmctld and slurmd under `root`; stop them (by PID) on exit."""
    root = Path(root).resolve()
    for sub in ("log", "state", "spool"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    node = socket.gethostname().split(".")[0]
    conf = root / "slurm.conf"
    conf.write_text(
        slurm_conf_text(root, node, os.cpu_count() or 1, _real_memory_mb(), (_free_port(), _free_port()))
    )
    env = {**os.environ, "SLURM_CONF": str(conf)}
    cluster = SlurmCluster(root=root, node=node, env=env)
    processes: list[subprocess.Popen] = []
    try:
        processes.append(_start_munged(root))
        processes.append(
            _start([_binary("slurmctld"), "-D", "-f", str(conf)], root / "log" / "slurmctld.out")
        )
        processes.append(
            _start([_binary("slurmd"), "-D", "-f", str(conf), "-N", node], root / "log" / "slurmd.out")
        )
        try:
            _wait_for(lambda: _node_idle(cluster), 60, "Slurm node")
        except (TimeoutError, RuntimeError) as error:
            raise RuntimeError(f"{error}\n{cluster.logs()}") from error
        yield cluster
    finally:
        if len(processes) == 3:
            _cancel_all(cluster)
        for process in reversed(processes):
            _stop(process)
