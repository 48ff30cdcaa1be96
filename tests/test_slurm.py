"""The Slurm job backend against a real single-node Slurm cluster started by the test.

The fixture writes a slurm.conf and a munge key into a scratch folder, starts munged,
slurmctld and slurmd (as root; Debian's slurm-wlm and munge, installed by
tools/install.sh) and stops them at the end. It skips where they cannot run.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Dict, Iterator, List

import pytest

from recipe_sandbox import REPO, make_recipe, read_map, run_recipe

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "sinfo", "srun", "scontrol")
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
# The chunk-wise binary and the offline one (test_recipe_e2e decodes every head).
HEADS = ("streaming", "ctc")
RUNNER = REPO / "egs2" / "TEMPLATE" / "asr1" / "scripts" / "slurm.sh"
# The demo's tiny corpus with the debug model, two jobs per parallel step and two
# training processes (srun tasks under Slurm).
TINY = ["--corpus_size", "tiny", "--nj", "2", "--cpu_train_procs", "2",
        "--asr_config", str(REPO / "conf" / "debug" / "joint_sp_ed.yaml"),
        "--decode_heads", " ".join(HEADS), "--latency_max_utts", "2",
        "--asr_args", "--max_epoch 1", "--tag", "tiny"]


def free_port() -> int:
    """A TCP port nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def real_memory_mb() -> int:
    """The node's RealMemory: MemTotal less a 10% margin, in MB."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 9 // 10 // 1024
    raise RuntimeError("no MemTotal in /proc/meminfo")


def slurm_conf(root: Path, socket_path: Path) -> str:
    """A single-node cluster: node and controller on localhost, state under ``root``."""
    return "\n".join([
        "ClusterName=dualmodetest",
        "SlurmctldHost=localhost",
        "SlurmUser=root",
        "SlurmdUser=root",
        f"SlurmctldPort={free_port()}",
        f"SlurmdPort={free_port()}",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={socket_path}",
        f"StateSaveLocation={root / 'state'}",
        f"SlurmdSpoolDir={root / 'spool'}",
        f"SlurmctldPidFile={root / 'slurmctld.pid'}",
        f"SlurmdPidFile={root / 'slurmd.pid'}",
        f"SlurmctldLogFile={root / 'slurmctld.log'}",
        f"SlurmdLogFile={root / 'slurmd.log'}",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_CPU",
        "SchedulerType=sched/builtin",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "MpiDefault=none",
        "ReturnToService=2",
        # the node as configured whatever the machine reports (CI machines differ)
        "SlurmdParameters=config_overrides",
        f"NodeName=localhost NodeAddr=127.0.0.1 CPUs=2 RealMemory={real_memory_mb()} State=UNKNOWN",
        "PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP",
        "",
    ])


def stop(process: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after 10 s."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def slurm(tmp_path_factory) -> Iterator[Dict[str, str]]:
    """A running single-node cluster; yields the environment variables its clients need."""
    missing = [b for b in DAEMONS + CLIENTS if shutil.which(b, path=SEARCH_PATH) is None]
    if missing:
        pytest.skip(f"Slurm/munge not installed (missing {', '.join(missing)}; "
                    "apt-get install slurm-wlm munge, as tools/install.sh does as root)")
    if os.geteuid() != 0:
        pytest.skip("the test's Slurm cluster runs its daemons as root (SlurmUser=root)")
    root = tmp_path_factory.mktemp("slurm")
    for sub in ("state", "spool", "munge"):
        (root / sub).mkdir()
    (root / "munge").chmod(0o700)
    key = root / "munge" / "munge.key"
    key.write_bytes(secrets.token_bytes(1024))
    key.chmod(0o400)
    munge_socket = root / "munge" / "munge.socket"
    conf = root / "slurm.conf"
    conf.write_text(slurm_conf(root, munge_socket))
    client_env = {"SLURM_CONF": str(conf), "PATH": SEARCH_PATH}
    env = dict(os.environ, **client_env)
    commands: List[List[str]] = [
        [shutil.which("munged", path=SEARCH_PATH), "--foreground", "--force",
         f"--key-file={key}", f"--socket={munge_socket}", f"--pid-file={root / 'munged.pid'}",
         f"--log-file={root / 'munged.log'}", f"--seed-file={root / 'munged.seed'}"],
        [shutil.which("slurmctld", path=SEARCH_PATH), "-D", "-i", "-f", str(conf)],
        [shutil.which("slurmd", path=SEARCH_PATH), "-D", "-N", "localhost", "-f", str(conf)],
    ]
    daemons: List[subprocess.Popen] = []
    try:
        for command in commands:
            name = Path(command[0]).name
            with open(root / f"{name}.out", "w") as out:
                daemons.append(subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                                env=env, start_new_session=True))
            if name == "munged":
                deadline = time.time() + 20
                while not munge_socket.exists():
                    assert daemons[-1].poll() is None and time.time() < deadline, \
                        (root / "munged.out").read_text() + (root / "munged.log").read_text()
                    time.sleep(0.1)
        deadline = time.time() + 60
        state = ""
        while state != "idle":
            for daemon in daemons:
                if daemon.poll() is not None:
                    pytest.fail(f"{daemon.args[0]} exited: " + "".join(
                        (root / f).read_text() for f in ("slurmctld.log", "slurmd.log")
                        if (root / f).exists())[-3000:])
            assert time.time() < deadline, f"the node is not idle after 60 s: {state!r}"
            time.sleep(0.5)
            state = subprocess.run(["sinfo", "--noheader", "--Node", "--format", "%T"],
                                   capture_output=True, text=True, env=env).stdout.strip()
        yield client_env
    finally:
        for daemon in reversed(daemons):
            stop(daemon)


def runner(env: Dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(RUNNER), *args], cwd=cwd, capture_output=True, text=True,
                          env=dict(os.environ, **env), timeout=300)


def job_id(log: Path) -> str:
    """The SLURM_JOB_ID a job's log names (AssertionError when it names none)."""
    found = re.search(r"^# SLURM_JOB_ID=(\d+) ", log.read_text(), flags=re.M)
    assert found, log.read_text()
    return found.group(1)


def test_a_failed_job_names_its_log_and_a_rerun_resubmits_only_it(slurm, tmp_path: Path) -> None:
    command = ["JOB=1:3", "logs/work.JOB.log", "bash", "-c",
               "echo job JOB; test JOB != 2 || test -f fixed"]
    first = runner(slurm, tmp_path, *command)
    assert first.returncode == 1, first.stdout + first.stderr
    assert re.search(r"^job 2 \(Slurm job \d+_2\) failed; log: logs/work\.2\.log$",
                     first.stderr, flags=re.M), first.stderr
    assert "job 1 " not in first.stderr and "job 3 " not in first.stderr
    logs = [tmp_path / "logs" / f"work.{i}.log" for i in (1, 2, 3)]
    assert logs[1].read_text().rstrip().endswith("exit status 1")
    ids = [job_id(log) for log in logs]
    assert len(set(ids)) == 3  # three array tasks

    (tmp_path / "fixed").touch()
    second = runner(slurm, tmp_path, *command)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "submitted 1 job(s) of work" in second.stdout
    assert "job 1 already finished" in second.stdout and "job 3 already finished" in second.stdout
    assert [job_id(logs[0]), job_id(logs[2])] == [ids[0], ids[2]]  # not run again
    assert job_id(logs[1]) not in ids
    assert "job 2\n" in logs[1].read_text()
    assert logs[1].read_text().rstrip().endswith("exit status 0")

    # A changed command is a different job: everything runs again.
    third = runner(slurm, tmp_path, "JOB=1:3", "logs/work.JOB.log", "echo", "other", "JOB")
    assert third.returncode == 0 and "submitted 3 job(s)" in third.stdout, third.stdout


def test_runner_rejects_a_bad_config(slurm, tmp_path: Path) -> None:
    conf = tmp_path / "slurm.conf"
    conf.write_text("partition=debug\nmemory=4G\n")
    result = runner(slurm, tmp_path, "--config", str(conf), "log", "true")
    assert result.returncode == 2
    assert f"{conf}:2: expected KEY=VALUE" in result.stderr


def scores(recipe: Path) -> Dict[str, dict]:
    """Every head's error counts (scores.json less its folder) and hypotheses."""
    decode = recipe / "exp" / "asr_tiny" / "decode_asr_asr_model_valid.loss.ave"
    result = {}
    for head in HEADS:
        counts = [json.loads(line) for line in
                  (decode / head / "test" / "scores.json").read_text().splitlines()]
        assert counts, head
        result[head] = {"counts": [{k: v for k, v in c.items() if k != "score_dir"}
                                   for c in counts],
                        "text": read_map(decode / head / "test" / "text")}
    return result


def cer_rows(recipe: Path) -> List[str]:
    """The CER table rows of RESULTS.md (its latency line is a timing and differs)."""
    results = (recipe / "exp" / "asr_tiny" / "RESULTS.md").read_text()
    return re.findall(r"^\|\w+\|[^|]+\|$", results, flags=re.M)


def test_demo_stages_1_to_13_through_slurm_score_as_the_local_backend(
        slurm, tmp_path_factory) -> None:
    on_slurm = make_recipe("demo_ja", tmp_path_factory.mktemp("slurm_run"))
    result = run_recipe(on_slurm, TINY + ["--cmd_backend", "slurm"], timeout=1800, env=slurm)
    assert result.returncode == 0, result.stdout[-6000:]
    local = make_recipe("demo_ja", tmp_path_factory.mktemp("local_run"))
    # (the latency, a timing, is measured under Slurm only)
    reference = run_recipe(local, TINY + ["--measure_latency", "false"], timeout=1800)
    assert reference.returncode == 0, reference.stdout[-6000:]

    assert scores(on_slurm) == scores(local)
    rows = cer_rows(on_slurm)
    assert len(rows) == len(HEADS) and rows == cer_rows(local)

    # Every parallel step ran as Slurm jobs: their logs name the job.
    exp = on_slurm / "exp"
    decode = exp / "asr_tiny" / "decode_asr_asr_model_valid.loss.ave"
    logs = [exp / "logs" / "data_prep.log", exp / "logs" / "format.test.log",
            exp / "asr_stats_raw_char" / "logdir" / "stats.1.log",
            exp / "asr_stats_raw_char" / "logdir" / "stats.2.log",
            exp / "asr_tiny" / "logs" / "train.log",
            decode / "latency" / "latency.log"]
    for head in HEADS:
        logs += [decode / head / "test" / "logdir" / "decode.1.log",
                 decode / head / "test" / "logdir" / "decode.2.log",
                 decode / head / "test" / "score.log"]
    ids = [job_id(log) for log in logs]
    assert len(set(ids)) == len(ids)
    # Training: two srun tasks, ranks and world size from Slurm (ESPnet's slurm launcher).
    train_log = (exp / "asr_tiny" / "logs" / "train.log").read_text()
    assert "srun --kill-on-bad-exit=1" in train_log and "--dist_launcher slurm" in train_log
    assert (on_slurm / "exp" / "asr_tiny" / "valid.loss.ave.pth").exists()
    # A decoding job that failed (its log's last line) is the only one resubmitted when the
    # stage runs again; the other job of that step and the other heads are not run again.
    logdir = decode / "ctc" / "test" / "logdir"
    failed = logdir / "decode.2.log"
    failed.write_text(failed.read_text().replace("exit status 0", "exit status 1"))
    (decode / "ctc" / "test" / ".done_stage12").unlink()
    before = {log: job_id(log) for log in logs}
    again = run_recipe(on_slurm, TINY + ["--cmd_backend", "slurm", "--stage", "12"], env=slurm)
    assert again.returncode == 0, again.stdout[-4000:]
    assert f"resuming the jobs in {logdir.relative_to(on_slurm)}" in again.stdout
    stage12 = (exp / "asr_tiny" / "logs" / "stage12.log").read_text()
    assert f"job 1 already finished ({logdir.relative_to(on_slurm)}/decode.1.log)" in stage12
    changed = [log for log in logs if job_id(log) != before[log]]
    assert changed == [failed], changed
    assert scores(on_slurm) == scores(local)
    # The local backend left no Slurm traces.
    assert not (local / "exp" / "asr_tiny" / "logs" / "train.log").exists()
    assert "SLURM_JOB_ID" not in (local / "exp" / "asr_tiny" / "logs" / "train.1.log").read_text()
