"""One line when a process of a distributed run stops: the watchdog of `keras-cnn train --distributed`.

JAX's distributed runtime ends a process from C++ when it loses the others: when the coordinator (process 0)
goes away, when a process sends no heartbeat for `--heartbeat-timeout` seconds, when not every process joins
within `--join-timeout`, or when they do not all reach the end. It aborts with a fatal log line and a stack
trace, which Python cannot catch. So `keras-cnn train --distributed` trains in a child process and watches it:
the child's output passes through (less the native log lines, as in every command), and when JAX aborts it the
watchdog prints one line saying what was lost and what to do, and exits with status 2. The child dies with the
watchdog (Linux), so killing the command's process stops its training too; SIGTERM is passed on.
"""
import os
import re
import signal
import subprocess
import sys

CHILD = "KERAS_CNN_DISTRIBUTED_PARENT"  # in the child: the watchdog's process id
FATAL = "Terminating process because the JAX distributed service detected fatal errors"
# Native log lines of JAX's coordination service and gloo: from the first, the process is failing.
FAULT = re.compile(r"[EF]\d{4} .*(coordination_service|client\.h|preemption_sync|distributed)")
STACK = re.compile(r"\s+@\s+0x|\*\*\* Check failure stack trace")


def is_child():
    """Whether this process is the training process of a `--distributed` command."""
    return bool(os.environ.get(CHILD))


def die_with_parent():
    """In the child: be killed when the watchdog dies (PR_SET_PDEATHSIG, Linux; elsewhere nothing)."""
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != int(os.environ[CHILD]):  # the watchdog died before the line above
        os._exit(1)


def supervise(argv, label, drop=None):
    """Run `keras-cnn ARGV` in a child process and return its exit status; pass its output through, less the
    stderr lines `drop` matches; if JAX's runtime aborts it, print one line about process `label`'s run."""
    child = subprocess.Popen([sys.executable, "-m", "keras_cnn.cli", *argv], stderr=subprocess.PIPE,
                             env={**os.environ, CHILD: str(os.getpid())})
    try:
        previous = signal.signal(signal.SIGTERM, lambda number, frame: child.send_signal(number))
    except ValueError:  # not the main thread: the child gets no SIGTERM from here
        previous = None
    try:
        said, fault = _relay(child.stderr, drop)
        status = child.wait()
    except KeyboardInterrupt:  # the child got it too (one process group): give it time to stop on its own
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if child.poll() is None:
            child.kill()
            child.wait()
    if status >= 0 or said:
        return status if status >= 0 else 2
    if fault:
        print(f"keras-cnn: error: {explain(fault, label)}", file=sys.stderr)
        return 2
    print(f"keras-cnn: error: {label} was stopped by {signal.Signals(-status).name}", file=sys.stderr)
    return 128 - status


def _relay(stream, drop):
    """Copy the child's stderr lines to ours until it closes: (whether the child printed its own one-line error,
    the text of JAX's fault messages). From the first fault line on, only keras-cnn's own lines pass."""
    said, fault = False, []
    for raw in stream:
        line = raw.decode(errors="replace")
        if line.startswith("keras-cnn: "):
            said = said or "error:" in line
        elif fault or FAULT.match(line):
            if not STACK.match(line):
                fault.append(line.strip())
            continue
        elif drop is not None and (drop.match(line) or line.startswith("[Gloo] ")):
            continue
        sys.stderr.write(line)
        sys.stderr.flush()
    return said, " ".join(fault)


def explain(fault, label):
    """One line for JAX's fault messages `fault` (their text, joined)."""
    resume = "The run folder keeps every finished epoch: start every process again with --resume"
    lost = re.search(r"stopped sending heartbeats\):\s*([\d\s,]+)", fault) or re.search(
        r"Task (\d+) heartbeat timeout", fault)
    if lost:
        who = ", ".join(re.findall(r"\d+", lost.group(1)))
        return (f"{label} stopped: process {who} sent no heartbeat within the heartbeat timeout "
                f"(--heartbeat-timeout): it was killed, crashed, hangs or cannot be reached. {resume}")
    if "RegisterTask" in fault or "GetTaskState" in fault or ("DEADLINE_EXCEEDED" in fault and FATAL in fault and
                                                              "Barrier" not in fault):
        return (f"{label} stopped: not every process joined within the join timeout (--join-timeout): start all of "
                "them with the same --coordinator and --num-processes, each with its own --process-id")
    if "coordination service" in fault or "leader task" in fault or "Socket closed" in fault:
        return (f"{label} stopped: it lost process 0, the coordinator (killed, crashed, or its machine cannot be "
                f"reached). {resume}")
    status = fault.split("absl::Status:", 1)[-1].strip() if FATAL in fault else fault
    return f"{label} stopped: JAX's distributed runtime ended it ({' '.join(status.split()[:30])}). {resume}"
