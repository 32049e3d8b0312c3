"""Training over several processes (`--distributed`, JAX backend): the configuration, its one-line errors, the
watchdog's lines, and (slow) two processes on this machine that train one model, stop together when one is
killed and resume together.

The slow tests start the processes inside a network namespace of their own (`unshare -nu`: loopback only,
host name "localhost"), so that nothing they listen on (JAX's coordinator, gloo) is reachable from outside;
every process they start is killed by its own PID in a `finally` block.
"""
import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

import keras_cnn
from keras_cnn import cli
from keras_cnn.artifacts import runs
from keras_cnn.training import distributed, supervision
from keras_cnn.training.config import TrainConfig
from keras_cnn.training.distributed import DistributedConfig

HAS_JAX = importlib.util.find_spec("jax") is not None


# ---------------------------------------------------------------- configuration and its errors
@pytest.mark.parametrize("fields, fragment", [
    ({"num_processes": 0}, "Received: num_processes=0"),
    ({"num_processes": 2, "process_id": 2}, "Received: process_id=2"),
    ({"process_id": -1}, "Received: process_id=-1"),
    ({"coordinator": "10.0.0.1"}, "Received: coordinator='10.0.0.1'"),
    ({"coordinator": "10.0.0.1:70000"}, "Received: coordinator='10.0.0.1:70000'"),
    ({"join_timeout": 0}, "Received: join_timeout=0"),
    ({"heartbeat_timeout": 1.5}, "Received: heartbeat_timeout=1.5"),
])
def test_a_bad_configuration_is_one_line_ending_in_what_was_received(fields, fragment):
    with pytest.raises(ValueError) as error:
        DistributedConfig(**fields)
    assert str(error.value).endswith(fragment) and "\n" not in str(error.value)


def test_flags_win_over_keras_variables_and_the_first_job_address_is_the_coordinator(monkeypatch):
    monkeypatch.setenv("KERAS_DISTRIBUTION_JOB_ADDRESSES", "10.0.0.1:1234,10.0.0.2:2345")
    monkeypatch.setenv("KERAS_DISTRIBUTION_NUM_PROCESSES", "2")
    monkeypatch.setenv("KERAS_DISTRIBUTION_PROCESS_ID", "1")
    assert DistributedConfig.from_environment() == DistributedConfig("10.0.0.1:1234", 2, 1)
    assert DistributedConfig.from_environment("127.0.0.1:9", process_id=0, join_timeout=5) == DistributedConfig(
        "127.0.0.1:9", 2, 0, join_timeout=5)
    monkeypatch.setenv("KERAS_DISTRIBUTION_NUM_PROCESSES", "3")
    with pytest.raises(ValueError, match="names 2 processes, not 3"):
        DistributedConfig.from_environment()
    monkeypatch.setenv("KERAS_DISTRIBUTION_PROCESS_ID", "one")
    with pytest.raises(ValueError, match="Received: KERAS_DISTRIBUTION_PROCESS_ID='one'"):
        DistributedConfig.from_environment(num_processes=2)


def test_without_flags_or_variables_the_rest_is_left_to_jax(monkeypatch):
    for name in distributed.ENVIRONMENT.values():
        monkeypatch.delenv(name, raising=False)
    assert DistributedConfig.from_environment() == DistributedConfig()  # SLURM, Open MPI, Kubernetes: JAX's


def test_distributed_needs_the_jax_backend_and_no_tensorflow_strategy():
    with pytest.raises(ValueError) as error:
        distributed.check_backend("tensorflow")
    assert "--backend jax" in str(error.value) and "--strategy mirrored" in str(error.value)
    assert str(error.value).endswith("Received: backend='tensorflow'")
    with pytest.raises(ValueError, match="Received: strategy='mirrored'$"):
        distributed.check_backend("jax", "mirrored")
    distributed.check_backend("jax")


@pytest.mark.parametrize("args, fragment", [
    (["train", "small", "--distributed"], "Received: backend='tensorflow'"),
    (["train", "small", "--process-id", "1"], "--process-id applies to --distributed training"),
    (["train", "small", "--distributed", "--strategy", "mirrored"], "Received: strategy='mirrored'"),
])
def test_the_command_refuses_what_cannot_run_in_one_line(args, fragment, capsys):
    assert cli.main(args) == 2
    error = capsys.readouterr().err
    assert error.startswith("keras-cnn: error: ") and fragment in error and error.count("\n") == 1


def test_train_refuses_distribution_on_tensorflow_before_loading_anything():
    with pytest.raises(ValueError, match="Received: backend='tensorflow'"):
        keras_cnn.train("small", data=object(), distribution=True)


def test_a_missing_coordinator_fails_within_the_join_timeout():
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(ValueError) as error:
        distributed._wait_for_coordinator(DistributedConfig(f"127.0.0.1:{port}", 2, 1, join_timeout=1))
    assert time.monotonic() - started < 4
    assert "could not reach the coordinator" in str(error.value) and "within 1 s" in str(error.value)
    assert str(error.value).endswith(f"Received: coordinator='127.0.0.1:{port}'")


def test_a_loopback_coordinator_listens_on_loopback_only():
    assert distributed._bind_address("127.0.0.1:1234") == "127.0.0.1:1234"
    assert distributed._bind_address("localhost:1234") == "localhost:1234"
    assert distributed._bind_address("10.0.0.1:1234") is None  # JAX's choice: every interface
    assert distributed._bind_address("node-0.example:1234") is None
    assert distributed._bind_address(None) is None


@pytest.mark.parametrize("images, devices, largest, expected", [
    (179, 2, 64, 44),     # digits' validation split: 4 batches, 3 images left out
    (5000, 2, 128, 128),  # 39 batches, 8 left out
    (5000, 2, 512, 500),
    (10, 4, 128, 8),
    (7, 2, 128, 6),
])
def test_the_validation_batch_is_a_multiple_of_the_devices_leaving_out_little(images, devices, largest, expected):
    size = distributed.validation_batch(images, devices, largest)
    assert size == expected and size % devices == 0
    assert images % size <= max(images % devices, images * distributed.VALIDATION_DROP)


def test_the_processes_compare_every_training_argument_but_their_own():
    def call(**changes):
        values = {"model": "small", "data": "digits", "epochs": 3, "batch_size": 64, "seed": 0, "out": "run",
                  "verbose": "auto", "distribution": DistributedConfig(process_id=0), "callbacks": ()}
        return TrainConfig(**{**values, **changes})

    same = distributed.fingerprint(call())
    other_process = call(out="/mnt/run", verbose=0, distribution=DistributedConfig(process_id=1))
    assert same == distributed.fingerprint(other_process)
    assert same != distributed.fingerprint(call(batch_size=32))
    assert same != distributed.fingerprint(call(resume=True))
    assert same != distributed.fingerprint(call(model="lenet"))


def test_a_rerun_of_a_distributed_run_runs_in_one_process(tmp_path):
    run = runs.Run(tmp_path, config={"model": "small", "data": "digits", "arguments": {
        "epochs": 3, "distribution": "DistributedConfig(coordinator='127.0.0.1:1234', num_processes=2)"}})
    assert "distribution" not in run.rerun_arguments()


class JaxRuntimeError(RuntimeError):
    """Named like JAX's error of a collective that failed."""


def test_a_broken_all_reduce_names_the_lost_process():
    processes = distributed.Processes(None, 0, 2)
    error = JaxRuntimeError("INTERNAL: Error dispatching computation: Gloo all-reduce failed: [external/gloo/gloo/"
                            "transport/tcp/pair.cc:538] Read error [127.0.0.1]:44975: Connection reset by peer")
    lost = distributed._lost(error, processes)
    assert isinstance(lost, ConnectionError) and str(lost).startswith("process 0 of 2 lost process 1: ")
    assert "--resume" in str(lost) and "\n" not in str(lost)
    assert distributed._lost(JaxRuntimeError("shapes differ"), processes) is None
    assert distributed._lost(ValueError("Connection reset by peer"), processes) is None
    jax_numpy = ValueError("UNKNOWN: Gloo all-reduce failed: [external/gloo/gloo/transport/tcp/pair.cc:538] Read "
                           "error [127.0.0.1]:53942: Connection reset by peer")  # from a jax.numpy call
    assert str(distributed._lost(jax_numpy, distributed.Processes(None, 1, 2))).startswith("process 1 of 2 lost "
                                                                                             "process 0: ")


def test_the_private_folders_of_killed_processes_are_removed_and_no_other(tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for name in (f"keras-cnn-process1-{dead.pid}-abc", f"keras-cnn-process1-{os.getpid()}-abc", "keras-cnn-other"):
        (tmp_path / name).mkdir()
    distributed._remove_abandoned()
    assert sorted(os.listdir(tmp_path)) == ["keras-cnn-other", f"keras-cnn-process1-{os.getpid()}-abc"]


# ---------------------------------------------------------------- the watchdog's one line
HEARTBEAT_FAULT = """E1204 23:17:51.950319   26065 coordination_service.cc:1549] [1529] Use error polling to \
propagate the following error to all tasks: UNAVAILABLE: The following tasks are unhealthy (stopped sending \
heartbeats):
1
The tasks have crashed. Check the task logs for an earlier error.
F1204 23:17:51.950621   26076 client.h:80] Terminating process because the JAX distributed service detected fatal \
errors. absl::Status: INTERNAL: Shutdown barrier has failed.
*** Check failure stack trace: ***
    @     0x7f5d07c40634  absl::lts_20260107::log_internal::LogMessage::SendToLog()
"""
COORDINATOR_FAULT = """E1204 23:18:32.758310   26813 coordination_service_agent.cc:289] Polled an error from \
coordination service (this can be an error from this or another task).
F1204 23:18:32.758316   26813 client.h:80] Terminating process because the JAX distributed service detected fatal \
errors. absl::Status: UNAVAILABLE: Failed to send RPC to coordination service. Either the leader task was \
preempted/died/restarted unexpectedly or this task is experiencing network issues.
:UNKNOWN:Error received from peer  {grpc_status:14, grpc_message:"Socket closed"}
*** Check failure stack trace: ***
"""
JOIN_FAULT = """F1204 23:16:10.843187   24967 client.h:80] Terminating process because the JAX distributed service \
detected fatal errors. absl::Status: DEADLINE_EXCEEDED: Deadline Exceeded

RPC: /xla.coordination.CoordinationService/RegisterTask
*** Check failure stack trace: ***
"""


@pytest.mark.parametrize("fault, fragment", [
    (HEARTBEAT_FAULT, "process 0 stopped: process 1 sent no heartbeat within the heartbeat timeout"),
    (COORDINATOR_FAULT, "process 0 stopped: it lost process 0, the coordinator"),
    (JOIN_FAULT, "process 0 stopped: not every process joined within the join timeout"),
])
def test_jax_aborts_become_one_line(fault, fragment, tmp_path, capsys):
    with open(tmp_path / "stderr", "wb") as handle:
        handle.write(b"Epoch 3/8\n" + fault.encode())
    with open(tmp_path / "stderr", "rb") as stream:
        said, text = supervision._relay(stream, cli.NATIVE_LOG)
    assert not said and capsys.readouterr().err == "Epoch 3/8\n"  # the fault's lines are held back
    line = supervision.explain(text, "process 0")
    assert line.startswith(fragment) and "\n" not in line


def test_the_watchdog_passes_the_childs_own_error_and_status_through(tmp_path, capsys):
    status = supervision.supervise(["train", "small", "--distributed"], "process 0", drop=cli.NATIVE_LOG)
    assert status == 2
    error = capsys.readouterr().err
    assert error.startswith("keras-cnn: error: ") and error.count("\n") == 1  # one line, from the child


# ---------------------------------------------------------------- two processes (slow)
LAUNCHER = """
import json, os, socket, subprocess, sys
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
socket.sethostname("localhost")  # gloo listens on the address of the host name: loopback
spec = json.loads(sys.argv[1])
processes = []
for index, command in enumerate(spec["commands"]):
    with open(f"{spec['logs']}/{index}.out", "w") as out, open(f"{spec['logs']}/{index}.err", "w") as err:
        processes.append(subprocess.Popen(command, stdout=out, stderr=err, cwd=spec["cwd"]))
    with open(f"{spec['logs']}/{index}.pid", "w") as handle:
        handle.write(str(processes[-1].pid))
for index, process in enumerate(processes):
    status = process.wait()
    with open(f"{spec['logs']}/{index}.status", "w") as handle:
        handle.write(str(status))
"""


def namespace():
    """The `unshare` prefix that gives a command its own network (loopback only) and host name, or None."""
    for prefix in (["unshare", "-nu"], ["unshare", "-rnu"]):
        try:
            probe = subprocess.run([*prefix, "ip", "link", "set", "lo", "up"], capture_output=True, check=False)
            if probe.returncode == 0:
                return prefix
        except OSError:
            return None
    return None


slow_multiprocess = [
    pytest.mark.slow,
    pytest.mark.skipif(not HAS_JAX, reason="the JAX backend is not installed (pip install -e '.[jax]')"),
    pytest.mark.skipif(sys.platform != "linux" or namespace() is None,
                       reason="needs `unshare -nu` (Linux network namespaces) to keep the processes off the network"),
]


class Processes:
    """Commands started together in a network namespace of their own; each is killed by its PID on the way out."""

    def __init__(self, tmp_path, name, commands):
        self.logs = tmp_path / name
        self.logs.mkdir()
        spec = {"commands": commands, "logs": str(self.logs), "cwd": str(tmp_path)}
        self.launcher = subprocess.Popen([*namespace(), sys.executable, "-c", LAUNCHER, json.dumps(spec)],
                                         env={**os.environ, "TMPDIR": str(tmp_path / "tmp")})
        self.count = len(commands)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for index in range(self.count):
            pid = self.pid(index, wait=False)
            if pid and self.status(index) is None:
                kill(pid)
        if self.launcher.poll() is None:
            kill(self.launcher.pid)
        self.launcher.wait()

    def pid(self, index, wait=True):
        path = self.logs / f"{index}.pid"
        deadline = time.monotonic() + (60 if wait else 0)
        while not path.exists() or not path.read_text():
            if time.monotonic() > deadline:
                return None
            time.sleep(0.05)
        return int(path.read_text())

    def status(self, index):
        path = self.logs / f"{index}.status"
        return int(path.read_text()) if path.exists() and path.read_text() else None

    def wait(self, index, timeout):
        deadline = time.monotonic() + timeout
        while self.status(index) is None:
            assert time.monotonic() < deadline, f"process {index} still runs:\n{self.log(index)}"
            time.sleep(0.05)
        return self.status(index)

    def log(self, index, stream="err"):
        return (self.logs / f"{index}.{stream}").read_text()


def kill(pid):
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def train_command(port, index, out, *extra, epochs=6):
    return [sys.executable, "-m", "keras_cnn.cli", "--backend", "jax", "train", "small", "--data", "digits",
            "--epochs", str(epochs), "--batch-size", "64", "--precision", "float32", "--distributed",
            "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(index),
            "--heartbeat-timeout", "10", "--out", str(out), *extra]


def private_folders(tmp_path):
    """The private folders of processes other than 0 left in the processes' temporary folder."""
    return [name for name in os.listdir(tmp_path / "tmp") if name.startswith(distributed.SCRATCH)]


def checksum(log):
    found = re.findall(r"weights identical in every process \(checksum ([0-9a-f]{8})\)", log)
    assert len(found) == 1, log
    return found[0]


def slow(test):
    """Marks a test that starts processes: slow, and skipped without JAX or network namespaces."""
    for mark in reversed(slow_multiprocess):
        test = mark(test)
    return test


@slow
def test_two_processes_train_one_model_and_only_process_0_writes_the_run_folder(tmp_path):
    (tmp_path / "tmp").mkdir()
    out, elsewhere = tmp_path / "run", tmp_path / "run-as-process-1-names-it"  # --out may differ between machines
    commands = [train_command(12345, 0, out), train_command(12345, 1, elsewhere)]
    with Processes(tmp_path, "two", commands) as processes:
        assert processes.wait(0, 600) == 0, processes.log(0)
        assert processes.wait(1, 60) == 0, processes.log(1)
        assert checksum(processes.log(0)) == checksum(processes.log(1))  # and process 0 compared them
        assert "process 0 writes the run folder" in processes.log(1, "out")
    assert not elsewhere.exists() and not private_folders(tmp_path)  # process 1 wrote nothing that stayed
    config = json.loads((out / "config.json").read_text())
    assert config["epochs_run"] == 6 and len(runs.read_history(out / "history.csv")["loss"]) == 6
    assert {"model.keras", "metrics.json", "curves.png", "README.md"} <= set(os.listdir(out))

    single = [sys.executable, "-m", "keras_cnn.cli", "--backend", "jax", "train", "small", "--data", "digits",
              "--epochs", "6", "--batch-size", "64", "--precision", "float32", "--out", str(tmp_path / "single")]
    subprocess.run(single, check=True, capture_output=True, cwd=tmp_path, timeout=600)
    alone = json.loads((tmp_path / "single" / "config.json").read_text())["test_accuracy"]
    assert abs(config["test_accuracy"] - alone) < 0.05, (config["test_accuracy"], alone)  # 359 test images


@slow
@pytest.mark.parametrize("victim", [1, 0])
def test_a_killed_process_stops_the_other_in_one_line_and_both_resume(tmp_path, victim):
    (tmp_path / "tmp").mkdir()
    out, planned = tmp_path / "run", 8
    backup = out / "backup" / "training_metadata.json"

    def epochs_done():
        try:
            return json.loads(backup.read_text())["epoch"]
        except (OSError, ValueError, KeyError):
            return 0

    with Processes(tmp_path, "first", [train_command(12346, i, out, epochs=planned) for i in range(2)]) as first:
        deadline = time.monotonic() + 600
        while epochs_done() < 2:
            assert first.status(0) is None and time.monotonic() < deadline, first.log(0)
            time.sleep(0.02)
        time.sleep(0.5)  # mid-epoch
        kill(first.pid(victim))
        killed = time.monotonic()
        survivor = 1 - victim
        assert first.wait(survivor, 30) == 2
        elapsed = time.monotonic() - killed
    assert elapsed < 15, elapsed  # measured: 1.5 s (process 1 killed), 0.4 s (process 0 killed)
    lines = first.log(survivor).splitlines()
    assert len(lines) == 1 and lines[0].startswith("keras-cnn: error: ") and "--resume" in lines[0], lines
    assert f"lost process {victim}" in lines[0]
    done = epochs_done()
    assert 2 <= done < planned

    resumed = [train_command(12347, i, out, "--resume", epochs=planned) for i in range(2)]
    with Processes(tmp_path, "resumed", resumed) as second:
        assert second.wait(0, 900) == 0, second.log(0)
        assert second.wait(1, 60) == 0, second.log(1)
        assert checksum(second.log(0)) == checksum(second.log(1))
        rerun = [int(epoch) for epoch in re.findall(rf"^Epoch (\d+)/{planned}$", second.log(0, "out"), re.MULTILINE)]
    assert rerun == list(range(done + 1, planned + 1))  # the epochs finished before the kill are not trained again
    config = json.loads((out / "config.json").read_text())
    assert config["epochs_run"] == planned == len(runs.read_history(out / "history.csv")["loss"])
    assert not (out / "backup").exists() and not private_folders(tmp_path)  # the killed one's too


@slow
def test_processes_given_different_arguments_stop_before_training_and_leave_nothing(tmp_path):
    (tmp_path / "tmp").mkdir()
    out = tmp_path / "run"
    commands = [train_command(12348, 0, out, epochs=1), train_command(12348, 1, out, epochs=2)]
    with Processes(tmp_path, "different", commands) as processes:
        statuses = [processes.wait(index, 300) for index in range(2)]
    assert statuses == [2, 2]
    for index in range(2):
        lines = processes.log(index).splitlines()
        assert len(lines) == 1 and "process 1 was started with other training arguments than process 0" in lines[0]
    assert not out.exists() and not private_folders(tmp_path)
